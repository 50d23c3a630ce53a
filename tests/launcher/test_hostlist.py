"""SLURM host lists, expanded as `scontrol show hostnames` would."""

import pytest

from launcher.hostlist import expand


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("lx[1-2]", ["lx1", "lx2"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("gpu[09-11]", ["gpu09", "gpu10", "gpu11"]),
    ("a[1-2],login3,b[5]", ["a1", "a2", "login3", "b5"]),
    ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
    ("rack[1-2]-gpu[1-2]", ["rack1-gpu1", "rack1-gpu2", "rack2-gpu1", "rack2-gpu2"]),
])
def test_expand(nodelist, hosts):
    assert expand(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-2", "gpu]1", "gpu[a-b]"])
def test_malformed_lists_raise(bad):
    with pytest.raises(ValueError):
        expand(bad)
