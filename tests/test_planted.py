"""The planted defects of bench/planted.py still plant: each patch matches the code exactly once."""

from __future__ import annotations

import pytest

from bench import planted


@pytest.mark.parametrize("defect", planted.DEFECTS, ids=lambda d: d.name)
def test_every_planted_patch_applies_exactly_once_to_the_current_tree(defect, tmp_path):
    copy = planted.copy_tree(tmp_path)

    planted.apply(defect, copy)

    for file, old, new in defect.patches:
        text = (copy / file).read_text(encoding="utf-8")
        assert new in text and (old not in text or old in new)
        compile(text, file, "exec")  # the planted bug is still Python


def test_a_patch_whose_text_moved_fails_loudly(tmp_path):
    (tmp_path / "bridge").mkdir()
    (tmp_path / "bridge" / "x.py").write_text("a = 1\na = 1\n")
    twice = planted.Defect("twice", "drifted", (("bridge/x.py", "a = 1\n", "a = 2\n"),))
    gone = planted.Defect("gone", "drifted", (("bridge/x.py", "b = 1\n", "b = 2\n"),))

    for defect, count in ((twice, 2), (gone, 0)):
        with pytest.raises(planted.PatchDrift, match=f"{count} times"):
            planted.apply(defect, tmp_path)


def test_the_soak_report_is_read_for_the_invariants_that_failed():
    report = "x\ninvariants (violations):\n       0  one thing\n       3  another thing\n\nanother thing:\n  - a"

    assert planted.violations_of(report) == {"another thing": 3}


def test_every_planted_defect_names_invariants_the_soak_checks():
    from bench import soak

    for defect in planted.DEFECTS:
        assert defect.expect and set(defect.expect) <= set(soak.INVARIANTS), defect.name
