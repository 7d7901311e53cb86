"""The public Python API (`import fedbip_cli as fb`) keeps resolving every name it lists, whatever the tree."""

from __future__ import annotations

import fedbip_cli as fb


def test_every_public_name_resolves_to_its_object():
    for name in fb.__all__:
        obj = getattr(fb, name)
        assert obj is not None
        if callable(obj) and name != "__version__":
            assert obj.__name__ == name


def test_unknown_name_is_an_attribute_error():
    try:
        fb.no_such_function  # noqa: B018
    except AttributeError as e:
        assert "no_such_function" in str(e)
    else:
        raise AssertionError("expected AttributeError")
