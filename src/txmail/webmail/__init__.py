"""
The webmail: a JMAP client in the browser, served by the JMAP endpoint's site.

* :mod:`txmail.webmail.resource`: the page, its files and endpoints, and
  :func:`~txmail.webmail.resource.mount`, which puts them into the site;
* :mod:`txmail.webmail.session`: the cookie session and its CSRF check;
* :mod:`txmail.webmail.sanitize`: the server-side cleaning of HTML mail
  (nh3, the ``web`` extra).

The page itself is plain HTML, CSS and JavaScript modules under
``static/`` (no build step, nothing fetched from elsewhere).
"""
