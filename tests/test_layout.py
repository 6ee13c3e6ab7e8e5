"""The layering of the README's code map for the root modules, which import-linter cannot analyse
(it takes packages only; `.importlinter` checks the `bridge` package)."""

import ast

from tests.e2e import ROOT

LEAVES = {"config", "bridge.http", "bridge.rate_budget", "bridge.backoff", "bridge.text", "bridge.signature",
          "bridge.logging", "bridge.source_ids", "bridge.paging", "bridge.testhooks", "bridge.progress",
          "bridge.stopping"}
STORES = {f"bridge.store.{name}" for name in ("auth", "links", "replies", "notifications", "items", "threads",
                                              "watermarks", "jobs", "cache", "privacy")}
# What each root module may import of ours; entry points may import anything but each other.
ALLOWED = {
    "config": set(),
    "db_manager": LEAVES | STORES,
    "mercado_livre_api": LEAVES | STORES | {"db_manager"},
    "chatwoot_api": LEAVES | STORES | {"db_manager"},
}
OURS = ("bridge", "config", "db_manager", "mercado_livre_api", "chatwoot_api", "main", "webhook_server")


def _our_imports(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse((ROOT / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from bridge import text` imports the module bridge.text.
            names = [node.module] if node.module != "bridge" else [f"bridge.{a.name}" for a in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in OURS)
    return found


def test_the_stores_clients_and_config_import_only_what_sits_below_them():
    for module, allowed in ALLOWED.items():
        assert _our_imports(module) <= allowed, module


def test_the_entry_points_do_not_import_each_other():
    assert "webhook_server" not in _our_imports("main")
    assert "main" not in _our_imports("webhook_server")


def test_the_root_holds_only_the_entry_points_and_the_design_cards_modules():
    assert {p.name for p in ROOT.glob("*.py")} == {f"{m}.py" for m in ALLOWED} | {
        "main.py", "webhook_server.py", "gunicorn.conf.py"}


def test_the_readme_code_map_names_every_module_once():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### Code map", 1)[1].split("```", 2)[1]
    named, folder = [], ""
    for line in block.splitlines():
        entry = line.split(maxsplit=1)[0] if line.strip() else ""
        if entry.endswith("/"):
            folder = entry
        elif entry.endswith(".py"):
            named.append(folder + entry if line.startswith("  ") else entry)
    modules = [p.relative_to(ROOT).as_posix() for pattern in ("*.py", "bridge/**/*.py", "tools/*.py")
               for p in ROOT.glob(pattern) if p.name != "__init__.py"]
    assert sorted(named) == sorted(modules)
