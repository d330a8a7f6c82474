"""The docs stay true: every config override they show composes, every repo path they name
exists, every relative link resolves, and the README stays a five-minute read.

Documents: README.md, docs/*.md and benchmarks/README.md.

What is read as a Hydra override (composed with `mlpipe.config.compose`):
- every token inside `overrides="..."` or `OVERRIDES="..."` (in code blocks and inline code);
- the arguments of `python -m steps.main ...`;
- in inline code that is not program output (not `error: ...`, `warning: ...`, no `...Error:`),
  a standalone `key=value` token whose first key segment is a top-level config key or group
  (`data`, `model`, `preprocess`, `serve`, `seed`, ...; read from conf/config.yaml), e.g.
  `main.force=[train]` or `storage=s3 storage.fallback=false` (one span composes as one group).
Not overrides: `-P name=value` entry-point parameters (`steps=train,qa`, `model_uri=...`,
`preprocess_run_id=<id>`), environment variables (upper case), and tokens whose first segment
is not config (`baseline.p_value=0.41` in an error message). Write run tags without `=`
(the tag `serve.stopped_by` (`SIGTERM`)), or they are read as overrides.
A sweep (`-m a=1,2,3`) composes its first value. A placeholder value (`<name>`, `...`, `…`)
is not composed; its key (up to the first `<...>` segment) must exist in the composed config,
so a renamed key fails either way.

Paths: tokens starting with conf/, mlpipe/, steps/, tests/, benchmarks/ or docs/ in code
blocks and inline code are relative to the repository root; `{a,b}` is expanded; paths with
`<...>`, `*` or `...` are skipped. Links are relative to the document that holds them, and a
`#fragment` must name a heading of the target (GitHub's heading slugs).
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
README_MAX_LINES = 250
PATH_ROOTS = ("conf", "mlpipe", "steps", "tests", "benchmarks", "docs")

FENCE = re.compile(r"^ *```[^\n]*\n(.*?)^ *```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OVERRIDES_ARG = re.compile(r"""(?:overrides|OVERRIDES)=(["'])(.*?)\1""", re.S)
HYDRA_APP = re.compile(r"python -m steps\.main\b([^\n#`]*)")
PARAM = re.compile(r"(?:^|\s)-P\s+\S+")
TOKEN = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[a-z0-9_<>]+)*=\S+$")
PATH = re.compile(r"(?<![\w./:-])((?:%s)/[^\s`'\"(),;|\]]*)" % "|".join(PATH_ROOTS))
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@lru_cache(maxsize=None)
def top_level_keys() -> frozenset[str]:
    """Config groups and top-level keys of conf/config.yaml (`data`, `model`, ..., `seed`)."""
    config = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    groups = {key for entry in config.get("defaults", []) if isinstance(entry, dict) for key in entry}
    keys = {key for key in config if key not in ("defaults", "hydra")}
    return frozenset(key.split("@")[0].lstrip("+~/").split("/")[0] for key in groups | keys) - {"hydra"}


def split_markdown(text: str) -> tuple[list[str], list[str]]:
    """(fenced code blocks, inline code spans); spans are read from the text outside the blocks."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("\n", text)
    return blocks, [span for span in INLINE.findall(prose) if "\n\n" not in span]


def is_output(span: str) -> bool:
    """Program output quoted in the docs, not a command: error and warning lines."""
    stripped = span.strip()
    return stripped.startswith(("error:", "warning:")) or bool(re.search(r"\w+Error:", stripped))


def override_groups(text: str) -> list[list[str]]:
    """Every group of overrides one document shows (a group composes together)."""
    blocks, spans = split_markdown(text)
    groups: list[list[str]] = []

    def commands(code: str) -> str:
        """Take overrides="..." and `python -m steps.main ...` groups out of `code`; return the rest."""
        for match in OVERRIDES_ARG.finditer(code):
            groups.append([t for t in shlex.split(match.group(2)) if "=" in t])  # not -m, not "..."
        code = OVERRIDES_ARG.sub(" overrides-taken ", code)  # still a `-P` value: PARAM drops it
        for match in HYDRA_APP.finditer(code):
            groups.append([t for t in match.group(1).split() if not t.startswith("-") and "=" in t])
        return HYDRA_APP.sub(" ", code)

    for block in blocks:
        commands(block)
    for span in spans:
        rest = commands(span)
        if is_output(span):
            continue
        rest = PARAM.sub(" ", re.sub(r"<[^<>]*>", "<placeholder>", rest))  # `<a path>` is one token
        tokens = [t.strip("(),;:") for t in rest.split()]
        tokens = [t.rstrip(".") if not PLACEHOLDER.search(t) else t for t in tokens]
        found = [t for t in tokens if TOKEN.match(t) and t.split("=", 1)[0].split(".")[0] in top_level_keys()]
        if found:
            groups.append(found)
    return [g for g in groups if g]


def repo_paths(text: str) -> list[str]:
    """Repo-relative paths named in code blocks and inline code (braces expanded)."""
    blocks, spans = split_markdown(text)
    found: list[str] = []
    for code in blocks + spans:
        for raw in PATH.findall(code):
            path = raw.rstrip(".:")
            if PLACEHOLDER.search(path) or "*" in path:
                continue
            found.extend(expand_braces(path))
    return found


def expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [p for option in match.group(1).split(",")
            for p in expand_braces(path[: match.start()] + option + path[match.end():])]


def links(text: str) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("\n", text))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", FENCE.sub("\n", path.read_text()), re.M)}


def concrete(override: str) -> str:
    """`a=1,2,3` (a sweep) -> `a=1`; anything else as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except Exception:
        return override  # compose reports it
    if parsed.is_sweep_override():
        value = parsed.value()
        if hasattr(value, "start") and hasattr(value, "end") and not hasattr(value, "step"):
            return f"{parsed.get_key_element()}={value.start}"  # interval(a,b) (Optuna's search): its start
        return f"{parsed.get_key_element()}={next(iter(parsed.sweep_string_iterator()))}"
    return override


def check_group(group: list[str]) -> None:
    """Compose the group's concrete overrides; each placeholder key must exist in the result."""
    from omegaconf import OmegaConf

    from mlpipe.config import compose

    placeholders = [t for t in group if PLACEHOLDER.search(t.split("=", 1)[1]) or PLACEHOLDER.search(t.split("=", 1)[0])]
    cfg = compose([concrete(t) for t in group if t not in placeholders])
    if any(t.startswith("hydra.") for t in placeholders):  # a launcher's or sweeper's key: Hydra's own node
        from hydra import compose as hydra_compose, initialize_config_dir

        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = hydra_compose("config", [concrete(t) for t in group if t not in placeholders],
                                return_hydra_config=True)
    missing = object()
    for token in placeholders:
        key = token.split("=", 1)[0].lstrip("+~")
        key = ".".join(part for part in key.split(".")[: next(
            (i for i, part in enumerate(key.split(".")) if PLACEHOLDER.search(part)), None)])
        assert OmegaConf.select(cfg, key, default=missing) is not missing, f"no config key {key} (from {token})"


def collected() -> list[tuple[str, list[str]]]:
    """(document, group) once per distinct group of each document."""
    unique = {(rel(doc), tuple(group)) for doc in DOCUMENTS for group in override_groups(doc.read_text())}
    return [(doc, list(group)) for doc, group in sorted(unique)]


GROUPS = collected()
PATHS = sorted({(rel(doc), path) for doc in DOCUMENTS for path in repo_paths(doc.read_text())})
LINKS = sorted({(rel(doc), target) for doc in DOCUMENTS for target in links(doc.read_text())})


def test_the_extractors_find_what_the_docs_show():
    """Not vacuous: the documents show many overrides and paths, and the extractors catch a
    renamed key and a missing file."""
    overrides = [t for _, group in GROUPS for t in group]
    assert len(overrides) >= 10, overrides
    assert len(PATHS) >= 20, PATHS
    assert len(LINKS) >= 10, LINKS
    assert "data=synthetic" in overrides and "main.force=[train]" in overrides
    snippet = ('Run `mlflow run . -e main -P steps=train,qa -P overrides="model=ridge train.cv_folds=3"`;'
               " set `preprocess.fit_worker=true`; see `mlpipe/nope.py` and `MLFLOW_TRACKING_URI=x`.\n"
               "```sh\npython -m steps.main -m model.n_estimators=50,100\n```\n")
    assert override_groups(snippet) == [["model.n_estimators=50,100"], ["model=ridge", "train.cv_folds=3"],
                                        ["preprocess.fit_worker=true"]]
    assert repo_paths(snippet) == ["mlpipe/nope.py"]
    assert concrete("model.n_estimators=50,100") == "model.n_estimators=50"

    from mlpipe.errors import ConfigError

    with pytest.raises(ConfigError):
        check_group(["preprocess.fit_worker=true"])
    with pytest.raises(AssertionError):
        check_group(["preprocess.fit_worker=<mb>"])
    check_group(["preprocess.fit_worker_min_mb=<mb>", "data.validation.<key>=..."])


@pytest.mark.parametrize("doc, group", GROUPS, ids=[f"{d}:{' '.join(g)}" for d, g in GROUPS])
def test_every_override_composes(doc, group):
    check_group(group)


@pytest.mark.parametrize("doc, path", PATHS, ids=[f"{d}:{p}" for d, p in PATHS])
def test_every_named_path_exists(doc, path):
    assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"


@pytest.mark.parametrize("doc, target", LINKS, ids=[f"{d}:{t}" for d, t in LINKS])
def test_every_link_resolves(doc, target):
    source = ROOT / doc
    file_part, _, fragment = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    assert dest.exists(), f"{doc} links to {target}: {dest} does not exist"
    if fragment and dest.suffix == ".md":
        assert fragment in anchors(dest), f"{doc} links to {target}: no such heading in {rel(dest)}"


def test_readme_is_short_and_links_every_doc():
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES}"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README.read_text())}
    docs = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert docs, "no docs/*.md"
    assert docs <= linked, f"docs not linked from README.md: {sorted(rel(p) for p in docs - linked)}"
    assert (ROOT / "benchmarks" / "README.md").resolve() in linked
