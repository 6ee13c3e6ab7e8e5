"""What the docs quote of the commands' output, their names and the variables is what the code does.

A seller follows README.md and docs/guia.md word for word: a command renamed, a line `setup` no
longer prints, a variable nobody reads or a `/health` field that moved fails here, not at a
seller's console.  The outputs are taken from the real commands run against the fakes.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re

import pytest
import responses

import main
from bridge.admin import health
from bridge.admin.setup import run_check, run_setup
from config import load_settings
from db_manager import Database
from tests.conftest import base_env
from tests.e2e import ROOT

DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "docs/guia.md", "docs/privacidade.md")}
README, GUIDE = DOCS["README.md"], DOCS["docs/guia.md"]
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
PUBLIC = "https://ponte.sualoja.com.br"
NUMBER_WORDS = {"uma": 1, "um": 1, "duas": 2, "dois": 2, "três": 3, "quatro": 4, "cinco": 5, "seis": 6}


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main.main([*argv, "--help"])
    return out.getvalue()


def _commands() -> list[str]:
    choices = re.search(r"\{([a-z,-]+)\}", _help())
    assert choices, "main.py --help lists no commands"
    return choices.group(1).split(",")


def _config_variables() -> set[str]:
    """Every variable config.py reads, by the name it reads it under."""
    source = (ROOT / "config.py").read_text()
    return set(re.findall(r'\b(?:r|self)\.(?:_value|text|secret|url|positive_int|positive_float|boolean|zone)'
                          r'\(\s*"([A-Z][A-Z0-9_]+)"', source))


# ---- commands -----------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_command_a_doc_quotes_is_one_main_py_has(doc):
    commands = set(_commands())
    quoted = set(re.findall(r"(?:python3? main\.py|\./bridge\.sh)\s+([a-z][a-z-]*)", DOCS[doc]))
    assert quoted - commands == set(), f"{doc} quotes commands main.py does not have"


@pytest.mark.parametrize("doc", ["README.md", "docs/guia.md"])
def test_every_command_of_main_py_is_documented(doc):
    undocumented = [c for c in _commands()
                    if not re.search(rf"(?:python3? main\.py|\./bridge\.sh)\s+{re.escape(c)}\b", DOCS[doc])]
    assert undocumented == [], f"{doc} never shows these commands of main.py --help"


def test_every_option_a_doc_quotes_is_one_its_command_takes():
    for doc, text in DOCS.items():
        for command, rest in re.findall(r"(?:python3? main\.py|\./bridge\.sh)\s+([a-z][a-z-]*)([^`\n]*)", text):
            if command not in _commands():
                continue
            options = set(re.findall(r"(--[a-z][a-z-]+)", _help(command)))
            for option in re.findall(r"\s(--[a-z][a-z-]+)", rest):
                assert option in options, f"{doc}: `main.py {command} {option}` is not an option of {command}"


def _said_to_a_seller(path) -> list[tuple[int, str]]:
    """The string literals of a module that are not docstrings: what it prints, logs or serves."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_a_command_the_bridge_tells_a_seller_to_run_is_in_the_form_the_docs_give():
    # `python main.py authorize` fails on a plain machine (the bridge is in .venv), so the log line,
    # the callback page and the errors a seller reads say `./bridge.sh authorize` as the docs do.
    modules = [p for p in ROOT.glob("*.py")] + list((ROOT / "bridge").rglob("*.py"))
    told = [f"{p.relative_to(ROOT)}:{line}" for p in modules for line, text in _said_to_a_seller(p)
            if re.search(r"python3? main\.py \w", text)]
    assert told == []


def test_the_retry_kinds_the_guide_names_are_the_ones_retry_takes():
    kinds = re.search(r"\{([a-z,]+)\}", _help("retry")).group(1).split(",")
    row = next(line for line in GUIDE.splitlines() if "checks.items.retrying" in line)
    assert sorted(re.findall(r"`([a-z]+)`", row)) == sorted(kinds)


# ---- variables ----------------------------------------------------------------------------------

def _named_variables(text: str) -> set[str]:
    return set(re.findall(r"\b((?:MELI|CHATWOOT|DATABASE|QUESTIONS|MESSAGES|RETENTION|DISPLAY|TOKEN|BRIDGE)_"
                          r"[A-Z0-9_]+|PORT|LOG_LEVEL)\b", text))


def test_every_variable_config_reads_is_in_env_example_and_the_guide():
    """The README sends readers to .env.example; the guide's table is the seller's list."""
    read = _config_variables()
    assert {"MELI_APP_ID", "CHATWOOT_URL", "RETENTION_DAYS"} <= read
    for name, text in (("docs/guia.md", GUIDE), (".env.example", ENV_EXAMPLE)):
        assert read - _named_variables(text) == set(), f"{name} does not name these variables"


def test_every_variable_a_doc_names_is_read_by_the_code():
    code = "\n".join(p.read_text() for p in [*ROOT.glob("*.py"), *ROOT.glob("bridge/**/*.py"),
                                              *ROOT.glob("tools/*.py"), ROOT / "supervisord.conf",
                                              ROOT / "Dockerfile", ROOT / "run.sh"])
    for name, text in [*DOCS.items(), (".env.example", ENV_EXAMPLE)]:
        unknown = {v for v in _named_variables(text) if f'"{v}"' not in code and v not in code}
        assert unknown == set(), f"{name} names variables no code reads"


def test_env_example_assigns_every_variable_config_reads():
    assigned = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, re.M))
    assert _config_variables() - assigned == set()


# ---- what setup and check print ------------------------------------------------------------------

def _block_after(text: str, marker: str) -> list[str]:
    """The lines of the first fenced block after `marker`."""
    start = text.index(marker)
    fence = text.index("```", start)
    body = text[text.index("\n", fence) + 1: text.index("```", fence + 3)]
    return [line for line in body.splitlines() if line.strip()]


def _shape(line: str) -> str:
    """A printed line with its values (ids, secrets, placeholders) taken out."""
    line = re.sub(r"=.*$", "=…", line)
    return re.sub(r"\d+", "N", line).strip()


@pytest.fixture
def fresh_chatwoot(tmp_path):
    from tests.fakes import start_fakes
    running = start_fakes()
    env = base_env(tmp_path, CHATWOOT_URL=running.chatwoot.url, MELI_API_URL=running.meli.url,
                   CHATWOOT_QUESTIONS_INBOX_ID=None, CHATWOOT_MESSAGES_INBOX_ID=None,
                   CHATWOOT_WEBHOOK_SECRET=None)
    yield running, env
    running.stop()


def _setup_lines(env: dict) -> list[str]:
    lines: list[str] = []
    assert run_setup(load_settings(env, require_inboxes=False), PUBLIC, out=lines.append,
                     sleep=lambda s: None) == 0, lines
    return lines


def test_the_lines_the_guide_says_setup_prints_are_the_lines_it_prints(fresh_chatwoot):
    _fakes, env = fresh_chatwoot
    printed = _setup_lines(env)
    start = next(i for i, line in enumerate(printed) if line.startswith("Add these lines"))
    quoted = _block_after(GUIDE, "No fim, ele mostra as linhas para copiar")
    assert [_shape(line) for line in quoted] == [_shape(line) for line in printed[start:]
                                                 if line.strip() and not line.startswith("(")]


def test_the_number_of_lines_the_guide_asks_to_paste_is_the_number_setup_prints(fresh_chatwoot):
    _fakes, env = fresh_chatwoot
    variables = [line for line in _setup_lines(env) if re.match(r"^[A-Z_]+=", line)]
    said = re.search(r"cole essas (\w+) linhas", GUIDE)
    assert said and NUMBER_WORDS[said.group(1)] == len(variables)


def test_the_inboxes_the_docs_count_are_the_inboxes_setup_makes(fresh_chatwoot):
    fakes, env = fresh_chatwoot
    _setup_lines(env)
    made = len(fakes.chatwoot.state.inboxes)
    for word in re.findall(r"precisa de (\w+) caixas de entrada", GUIDE):
        assert NUMBER_WORDS[word] == made
    for word in re.findall(r"(?:Em cada uma das|nas) (\w+) caixas", GUIDE):
        assert NUMBER_WORDS[word] == made
    assert not re.search(r"\b(?:two|both) inboxes\b", README)


def test_the_checks_the_guide_lists_are_the_checks_check_runs(fresh_chatwoot, tmp_path):
    _fakes, env = fresh_chatwoot
    printed = _setup_lines(env)
    env.update(line.split("=", 1) for line in printed if re.match(r"^CHATWOOT_[A-Z_]+=", line))
    lines: list[str] = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as public:
        # The guide's public address is not on this machine: its /health is answered here, nothing goes out.
        public.add_passthru("http://127.0.0.1")
        public.get(f"{PUBLIC}/health", json={"ok": True, "failing": []})
        run_check(load_settings(env), PUBLIC, out=lines.append, sleep=lambda s: None)
    ran = [re.match(r"^(?:ok  |WARN|FAIL) ([a-z ]+):", line).group(1) for line in lines]
    section = GUIDE[GUIDE.index("**Conferir.**"):]
    section = section[:section.index("\n---")]
    listed = re.findall(r"^- `([a-z ]+)` [–-]", section, re.M)
    assert sorted(listed) == sorted(ran)



def test_what_a_second_setup_says_of_each_thing_already_right_is_what_the_docs_say(fresh_chatwoot):
    _fakes, env = fresh_chatwoot
    env.update(line.split("=", 1) for line in _setup_lines(env) if re.match(r"^CHATWOOT_[A-Z_]+=", line))
    again = [line for line in _setup_lines(env) if line.startswith("ok ") and not line.startswith("ok   chatwoot")]
    said = {"README.md": re.search(r"Running it again changes\s+nothing \(each line says ([^)]*)\)", README),
            "docs/guia.md": re.search(r"O que já está certo aparece como ([^\n]*)", GUIDE)}
    for doc, found in said.items():
        assert found, f"{doc} no longer says what a second setup prints"
        phrases = re.findall(r"`([a-z ]+)`", found.group(1))
        assert again and all(any(p in line for p in phrases) for line in again), (doc, phrases, again)



def test_every_failure_reason_the_guide_lists_is_one_the_bridge_writes():
    source = "".join(p.read_text() for p in (ROOT / "bridge").rglob("*.py"))
    source = re.sub(r"\{(?:claim_rules\.)?REPLY_TO_ATTRIBUTE\}", "meli_claim_reply_to", source)
    table = GUIDE[GUIDE.index("Estes são os motivos que a ponte escreve:"):]
    table = table[:table.index("\n\n", table.index("|"))]
    for row in table.splitlines()[2:]:
        for reason in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            # Placeholders (N, STATUS, ext, <nome>) and numbers stand for values; the words between are the code's.
            for words in re.split(r"<[^>]+>|\d+|\bN\b|\(STATUS\)|\(ext\)", reason):
                assert words.strip(" :;()") in source, f"the guide lists {reason!r}; the bridge never writes it"



def test_what_the_guide_says_a_failing_inbox_webhooks_line_names_is_what_check_writes(fresh_chatwoot):
    fakes, env = fresh_chatwoot
    env.update(line.split("=", 1) for line in _setup_lines(env) if re.match(r"^CHATWOOT_[A-Z_]+=", line))
    inboxes = fakes.chatwoot.state.inboxes
    inboxes[int(env["CHATWOOT_QUESTIONS_INBOX_ID"])]["webhook_url"] = ""  # emptied in Chatwoot
    inboxes[int(env["CHATWOOT_MESSAGES_INBOX_ID"])]["webhook_url"] = "https://elsewhere.example/webhook"
    inboxes[int(env["CHATWOOT_CLAIMS_INBOX_ID"])]["secret"] = "rotated-in-chatwoot"
    fakes.chatwoot.state.add_webhook(f"{PUBLIC}/webhook", "whsec-left-by-an-older-setup")
    lines: list[str] = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as public:
        public.add_passthru("http://127.0.0.1")
        public.get(f"{PUBLIC}/health", json={"ok": True, "failing": []})
        run_check(load_settings(env), PUBLIC, out=lines.append, sleep=lambda s: None)
    failing = next(line for line in lines if line.startswith("FAIL inbox webhooks:"))
    bullet = re.search(r"^- `inbox webhooks` [–-](.*?)(?=^- )", GUIDE, re.M | re.S).group(1)
    quoted = [q for q in re.findall(r"`([^`]+)`", bullet) if " " in q]
    assert len(quoted) == 4
    for phrase in quoted:
        for words in re.split(r"<[^>]+>|…", phrase):
            assert words.strip() in failing, f"the guide quotes {phrase!r}; check wrote {failing!r}"


# ---- what /health and `status` show ---------------------------------------------------------------

def _paths(value: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, inner in value.items():
        path = f"{prefix}.{key}" if prefix else key
        found.add(path)
        if isinstance(inner, dict) and not (prefix.endswith("runs") or prefix.endswith("retrying")):
            found |= _paths(inner, path)
    return found


def test_every_health_field_the_docs_name_is_one_the_status_has(tmp_path):
    settings = load_settings(base_env(tmp_path))
    db = Database(settings.database_path).open()
    try:
        statuses = [health.build_status(db, settings, 1000.0),
                    health.build_status(db, settings, 1000.0, problems=["CHATWOOT_URL: is required"])]
    finally:
        db.close()
    shown = set().union(*({f"checks.{p}" for p in _paths(s["checks"])} for s in statuses))
    # Fields that exist only in states hard to make here (authorized, a reply pending) are named by the code.
    code = (ROOT / "bridge/admin/health.py").read_text()
    for name, text in DOCS.items():
        for path in set(re.findall(r"`(checks\.[a-z_.]+)`", text)) | set(re.findall(r"`(checks\.[a-z_]+)\.", text)):
            leaf = path.rsplit(".", 1)[-1]
            assert path in shown or f'"{leaf}"' in code, f"{name} names {path}, which /health does not have"


def test_every_check_of_health_is_explained_in_the_guide(tmp_path):
    settings = load_settings(base_env(tmp_path))
    db = Database(settings.database_path).open()
    try:
        status = health.build_status(db, settings, 1000.0, problems=["CHATWOOT_URL: is required"])
    finally:
        db.close()
    for check in status["checks"]:
        assert f"`checks.{check}" in GUIDE, f"the guide's /health table does not explain checks.{check}"
