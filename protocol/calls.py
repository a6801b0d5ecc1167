"""Call structures (SPEC.md section 10.1, format 1.2): how each captured module was called, so that an analysis
host can call the module again on the recorded inputs (replay, docs/ARCHITECTURE.md section 6).

A **signature** is a JSON tree describing one call's ``(args, kwargs)``::

    {"args": [NODE, ...], "kwargs": {"name": NODE, ...}}

where each NODE is one of

- ``{"tensor": "args.0"}``: the tensor recorded under ``<module>:in.args.0`` (the argument path of section 5);
- ``{"value": v}``: a JSON value (None, a boolean, an integer, a float, a string);
- ``{"tuple": [NODE...]}``, ``{"list": [NODE...]}``, ``{"dict": {"key": NODE...}}``: containers (string keys);
- ``{"dtype": "float32"}``, ``{"device": "cpu"}``: a framework dtype or device;
- ``{"cache": "DynamicCache", "fresh": true}``: a key/value cache object; ``fresh`` when it held nothing of the
  current call's position when the step began (forward mode, a prefill), so a replay may pass no cache instead;
- ``{"opaque": "module.Class"}``: anything else (a replay cannot rebuild it).

The ``/calls`` document of a dump::

    {"version": 1, "signatures": [SIGNATURE...],
     "modules": [{"path": "model.layers.0", "class": "transformers...LlamaDecoderLayer", "default": 0}, ...],
     "exceptions": [[module, sample, step, call, signature], ...]}

Each module's calls use its ``default`` signature, except the (sample, step, call) listed in ``exceptions``
(``module`` is an index into ``modules``). Signatures are shared: a model with 1,000 modules called the same way
over 10,000 steps stores a handful of them.
"""
from __future__ import annotations

import json
from array import array

from .errors import CorruptDumpError

CALLS_VERSION = 1


class CallLogBuilder:
    """Collects the signatures of a capture's calls, deduplicated, in the order modules were first called.

    Memory is 24 bytes per call (the call's sample, step and index in typed arrays, per module and signature) plus
    one copy of each distinct signature: a 1,000-module model generating 128 tokens for 4 samples costs ~12 MB.
    """

    def __init__(self):
        self._sig_index: dict[str, int] = {}
        self._signatures: list[dict] = []
        self._modules: dict[str, dict] = {}  # path -> {"class", "calls": {sig: (samples, steps, calls) arrays}}

    def add(self, path: str, module_class: str, sample: int, step: int, call: int, signature: dict) -> None:
        """Record that module ``path`` was called with ``signature`` at (sample, step, call)."""
        text = json.dumps(signature, sort_keys=True, allow_nan=True)
        sig = self._sig_index.get(text)
        if sig is None:
            sig = self._sig_index[text] = len(self._signatures)
            self._signatures.append(signature)
        entry = self._modules.setdefault(path, {"class": module_class, "calls": {}})
        columns = entry["calls"].get(sig)
        if columns is None:
            columns = entry["calls"][sig] = (array("q"), array("q"), array("q"))
        for column, value in zip(columns, (sample, step, call)):
            column.append(value)

    def __bool__(self) -> bool:
        return bool(self._modules)

    def document(self) -> dict:
        """The ``/calls`` document (module docstring)."""
        modules, exceptions = [], []
        for i, (path, entry) in enumerate(self._modules.items()):
            calls = entry["calls"]
            default = max(calls, key=lambda s: (len(calls[s][0]), -s))  # the most common; ties: the first seen
            modules.append({"path": path, "class": entry["class"], "default": default})
            for sig, (samples, steps, indices) in calls.items():
                if sig != default:
                    exceptions += [[i, a, b, c, sig] for a, b, c in zip(samples, steps, indices)]
        return {"version": CALLS_VERSION, "signatures": self._signatures, "modules": modules,
                "exceptions": exceptions}


class CallLog:
    """The call structures of one dump, read from its ``/calls`` document.

    Raises (from ``from_document``):
        CorruptDumpError: a document that does not follow the layout above.
    """

    def __init__(self, signatures: list, modules: dict, exceptions: dict, document: dict | None = None):
        self.document = document  # as read (for listings)
        self._signatures = signatures
        self._modules = modules  # path -> (class, default)
        self._exceptions = exceptions  # (path, sample, step, call) -> signature index

    @classmethod
    def from_document(cls, doc, path: str) -> "CallLog":
        """Check and index a ``/calls`` document read from the dump at ``path``."""
        def bad(what: str) -> CorruptDumpError:
            return CorruptDumpError(f"the call structures (/calls) are malformed: {what}", path,
                                    "the file is damaged; capture it again")
        if not isinstance(doc, dict) or not isinstance(doc.get("signatures"), list) \
                or not isinstance(doc.get("modules"), list) or not isinstance(doc.get("exceptions", []), list):
            raise bad("expected an object with 'signatures', 'modules' and 'exceptions' lists")
        sigs = doc["signatures"]
        for s in sigs:
            if not isinstance(s, dict) or not isinstance(s.get("args"), list) or not isinstance(s.get("kwargs"), dict):
                raise bad("a signature without 'args' list and 'kwargs' object")
        modules, paths = {}, []
        for m in doc["modules"]:
            if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not _index_ok(m.get("default"), sigs):
                raise bad("a module entry without 'path' or with a 'default' outside the signatures")
            modules[m["path"]] = (str(m.get("class") or ""), m["default"])
            paths.append(m["path"])
        exceptions = {}
        for e in doc.get("exceptions", []):
            if not (isinstance(e, list) and len(e) == 5 and all(isinstance(x, int) for x in e)
                    and 0 <= e[0] < len(paths) and _index_ok(e[4], sigs)):
                raise bad("an exception entry that is not [module, sample, step, call, signature]")
            exceptions[(paths[e[0]], e[1], e[2], e[3])] = e[4]
        return cls(sigs, modules, exceptions, doc)

    def modules(self) -> list[str]:
        """The module paths with recorded calls, in the order they were first called."""
        return list(self._modules)

    def module_class(self, path: str) -> str | None:
        """The qualified class name of the module at ``path`` in the captured model, or None."""
        entry = self._modules.get(path)
        return entry[0] if entry else None

    def signature(self, path: str, sample: int, step: int, call: int) -> dict | None:
        """The signature of one call of module ``path``, or None when the module has no recorded call."""
        entry = self._modules.get(path)
        if entry is None:
            return None
        return self._signatures[self._exceptions.get((path, sample, step, call), entry[1])]


def _index_ok(i, items: list) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(items)

