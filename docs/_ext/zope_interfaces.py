"""
A Sphinx directive documenting zope.interface ``Interface``\\s.

autodoc documents classes, and an ``Interface`` is an ``InterfaceClass``
instance, not a class, so ``automodule`` leaves interfaces out.  This
directive fills the gap without another dependency::

    .. zope-interfaces:: txmail.interfaces

documents every interface the module lists in ``__all__`` (in that order),
and ``.. zope-interfaces:: txmail.interfaces IMailbox IDirectory`` only the
ones named.  Each becomes a ``py:class`` (so ``:class:`IMailbox``` links to
it) with its attributes and methods in definition order; docstrings go
through napoleon, as autodoc's do.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.docutils import SphinxDirective
from zope.interface.interface import InterfaceClass, Method

__all__ = ["ZopeInterfacesDirective", "setup"]


class ZopeInterfacesDirective(SphinxDirective):
    """``.. zope-interfaces:: module [Name ...]``"""

    required_arguments = 1
    optional_arguments = 100

    def _doc(self, text: str | None, indent: str) -> list[str]:
        cleaned = inspect.cleandoc(text or "")
        lines = GoogleDocstring(cleaned, self.env.config, what="method").lines()
        return [indent + line if line else "" for line in lines]

    def _interface(self, module: str, name: str, iface: InterfaceClass) -> list[str]:
        bases = [b for b in iface.__bases__ if b.__name__ != "Interface"]
        out = [f".. py:class:: {name}", f"   :module: {module}", ""]
        if bases:
            out += [
                "   Extends " + ", ".join(f":class:`{b.__module__}.{b.__name__}`" for b in bases) + ".",
                "",
            ]
        out += [*self._doc(iface.__doc__, "   "), ""]
        for member, description in iface.namesAndDescriptions():
            if isinstance(description, Method):
                out += [f"   .. py:method:: {member}{description.getSignatureString()}", ""]
            else:
                out += [f"   .. py:attribute:: {member}", ""]
            out += [*self._doc(description.getDoc(), "      "), ""]
        return out

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        names = self.arguments[1:] or list(getattr(module, "__all__", ()))
        lines: list[str] = []
        for name in names:
            obj: Any = getattr(module, name)
            if isinstance(obj, InterfaceClass):
                lines += self._interface(module_name, name, obj)
        self.env.note_dependency(module.__file__ or "")
        container = nodes.container()
        self.state.nested_parse(
            StringList(lines, source=f"<{module_name} interfaces>"), self.content_offset, container
        )
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("zope-interfaces", ZopeInterfacesDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
