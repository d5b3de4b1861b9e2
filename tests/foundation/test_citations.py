"""The repository explains itself: code, recipes and docs cite the paper's sections or docs/method.md, never notes
outside the repository (a "SPEC §" section, a ../shared path) that a lab does not have."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
OUTSIDE = re.compile(r"SPEC §|\bshared/[A-Z]|FIELD-NOTES")
SUFFIXES = {".py", ".md", ".yaml", ".toml", ".sh"}


def cited_outside(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix not in SUFFIXES or rel.parts[0] in {".venv", ".git", "runs"} or "egg-info" in str(rel):
            continue
        for n, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if OUTSIDE.search(line) and path.resolve() != Path(__file__).resolve():
                hits.append(f"{rel}:{n}: {line.strip()[:80]}")
    return hits


def test_nothing_cites_notes_outside_the_repository():
    hits = cited_outside(ROOT)
    assert not hits, "cite the paper or docs/method.md instead:\n" + "\n".join(hits)


def test_docs_method_holds_the_sections_the_code_cites():
    method = (ROOT / "docs" / "method.md").read_text()
    cited = set()
    for path in list((ROOT / "src").rglob("*.py")) + list((ROOT / "recipes").rglob("*.yaml")):
        cited |= set(re.findall(r"docs/method\.md §(\d(?:\.\d)?)", path.read_text()))
    assert {"1.1", "1.2", "1.4", "2.1", "2.3"} <= cited
    for section in cited:
        assert f"§{section} " in method, f"docs/method.md has no §{section}"


def test_the_check_sees_a_citation(tmp_path):
    (tmp_path / "a.py").write_text("x = 1  # SPEC §1.2\n")
    (tmp_path / "b.md").write_text("see ../shared/FIELD-NOTES.md\n")
    assert len(cited_outside(tmp_path)) == 2
