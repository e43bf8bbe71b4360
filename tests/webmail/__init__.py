"""Tests of the webmail (txmail.webmail): its Python parts and, in headless Chromium, the page."""
