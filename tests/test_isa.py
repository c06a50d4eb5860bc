"""ISA facts for `mcpu: host` (edgec/targets/cpu/isa.py): what the machine reports beats LLVM's name for it, both
ways, so an unknown newer CPU gets its AVX-512 and a hypervisor that hides AVX-512 never gets zmm code."""

from __future__ import annotations

import tvm

from edgec.targets.cpu.isa import host_features, host_mattr, isa_of

TRIPLE = "x86_64-linux-gnu"
FLAGS = "flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n"


def _isa(mcpu: str, mattr: list[str]):
    return isa_of(tvm.target.Target({"kind": "llvm", "mtriple": TRIPLE, "mcpu": mcpu,
                                     **({"mattr": mattr} if mattr else {})}))


def test_cpuinfo_flags_read_as_llvm_features():
    assert host_features("x86_64", FLAGS) == {"sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq",
                                              "avx512cd", "avx512bw", "avx512vl", "avx512vnni"}
    assert host_features("aarch64", "Features\t: fp asimd asimddp sve\n") == {"neon", "dotprod", "sve"}
    assert host_features("x86_64", "model name\t: nothing here\n") == frozenset()


def test_an_unknown_cpu_named_generic_gets_what_the_host_reports():
    reported = host_features("x86_64", FLAGS)
    mattr = host_mattr("generic", TRIPLE, reported)
    assert "+avx512f" in mattr and "+avx512vnni" in mattr and not [m for m in mattr if m.startswith("-")]
    isa = _isa("generic", mattr)
    assert isa.lanes == 16 and isa.vector_registers == 32 and isa.vnni


def test_features_the_host_hides_are_taken_away():
    reported = frozenset({"sse4.2", "avx", "avx2", "fma", "f16c"})  # an AVX-512 CPU behind a hypervisor hiding it
    mattr = host_mattr("znver4", TRIPLE, reported)
    assert "-avx512f" in mattr and "-avx512vnni" in mattr
    isa = _isa("znver4", mattr)
    assert isa.lanes == 8 and not isa.avx512 and not isa.vnni


def test_nothing_changes_where_the_host_agrees_or_cannot_be_read():
    assert host_mattr("znver4", TRIPLE, frozenset()) == []
    assert host_mattr("znver4", TRIPLE, _isa("znver4", []).features) == []


def test_missing_on_host_names_the_features_an_artifact_needs_and_the_cpu_lacks():
    """An x86:avx512 artifact on an AVX2 machine: the AVX-512 features are named (the local runner refuses it in
    one line instead of dying on an illegal instruction); on an AVX-512 machine, nothing; features /proc/cpuinfo
    cannot tell, or an unreadable cpuinfo, are not judged."""
    from edgec.targets.cpu.isa import missing_on_host

    avx2 = frozenset({"sse4.2", "avx", "avx2", "fma", "f16c"})
    built = ["avx", "avx2", "avx512f", "avx512vnni", "fma", "some-llvm-only-feature"]
    assert missing_on_host(built, "x86_64", avx2) == ["avx512f", "avx512vnni"]
    assert missing_on_host(built, "x86_64", avx2 | {"avx512f", "avx512vnni"}) == []
    assert missing_on_host(built, "x86_64", frozenset()) == []
    assert missing_on_host(["neon", "dotprod"], "aarch64", frozenset({"neon"})) == ["dotprod"]
