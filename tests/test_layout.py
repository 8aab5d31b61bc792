"""Every module of the library stays readable: at most 400 lines. A module about to pass that is
split along a seam first (re-exporting what callers import, where they need it)."""
from pathlib import Path

LIMIT = 400
ROOT = Path(__file__).resolve().parents[1]


def oversized(package: Path, limit: int = LIMIT) -> dict:
    """``{path relative to the package's parent: line count}`` of every .py over ``limit``."""
    sizes = {p.relative_to(package.parent).as_posix(): len(p.read_text().splitlines())
             for p in sorted(package.rglob("*.py"))}
    return {f: n for f, n in sizes.items() if n > limit}


def test_every_module_in_pdsl_is_at_most_400_lines():
    assert (ROOT / "pdsl" / "engine" / "train.py").is_file()  # the walk looks at the library
    over = oversized(ROOT / "pdsl")
    assert not over, (f"modules over {LIMIT} lines (split each along a seam): "
                      + ", ".join(f"{f} ({n} lines)" for f, n in over.items()))


def test_the_check_names_the_module_and_its_count(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "small.py").write_text("x = 1\n" * LIMIT)
    (pkg / "sub" / "big.py").write_text("x = 1\n" * (LIMIT + 1))
    assert oversized(pkg) == {"pkg/sub/big.py": LIMIT + 1}
