"""Interface-version checks between packages."""
import sys
import types

import pytest
from advssm.ssm_layers.compat import IncompatibleInterfaceError, require_interface


def test_matching_interface_passes():
    require_interface("advssm-ads", "0.1.0", "advssm.ssm_layers", "advssm-ssm-layers", supported=(1,))


def test_mismatch_names_both_versions(monkeypatch):
    fake = types.ModuleType("fake_provider")
    fake.INTERFACE_VERSION, fake.__version__ = 2, "0.9.0"
    monkeypatch.setitem(sys.modules, "fake_provider", fake)
    with pytest.raises(IncompatibleInterfaceError) as info:
        require_interface("advssm-ads", "0.1.0", "fake_provider", "advssm-ssm-layers", supported=(1,))
    message = str(info.value)
    assert "advssm-ads 0.1.0" in message and "advssm-ssm-layers 0.9.0" in message
    assert "interface 1" in message and "interface 2" in message
