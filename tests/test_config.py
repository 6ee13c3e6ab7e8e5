import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from tests.conftest import SECRETS, base_env
from tests.e2e import APP_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config(env: dict) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run([sys.executable, "-c", "import config; config.settings_or_exit()"], cwd=str(APP_DIR),
                          env=clean, capture_output=True, text=True, timeout=30)


def test_it_loads_a_complete_environment(tmp_path):
    settings = load_settings(base_env(tmp_path, QUESTIONS_POLL_SECONDS="0.5", MELI_USER_ID="42"))
    assert settings.meli_app_id == 123456
    assert settings.questions_poll_seconds == 0.5
    assert settings.meli_user_id == 42
    assert settings.chatwoot_webhook_secrets == ("whsec-one-5f3a", "whsec-two-9b1c")
    assert settings.meli_site_id == "MLB" and settings.port == 5000


def test_it_does_not_show_secrets_in_repr(settings):
    text = repr(settings)
    for value in ("meli-secret-xyz", "cw-token-abc", "whsec-one-5f3a"):
        assert value not in text


@pytest.mark.parametrize("name", ["MELI_APP_ID", "MELI_SECRET_KEY", "CHATWOOT_URL", "CHATWOOT_API_TOKEN",
                                  "CHATWOOT_ACCOUNT_ID", "CHATWOOT_QUESTIONS_INBOX_ID",
                                  "CHATWOOT_MESSAGES_INBOX_ID"])
def test_it_exits_2_naming_a_missing_required_variable(tmp_path, name):
    result = run_config(base_env(tmp_path, **{name: None}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "required" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name,value", [
    ("MELI_APP_ID", "abc"), ("CHATWOOT_ACCOUNT_ID", "-3"), ("CHATWOOT_QUESTIONS_INBOX_ID", "0"),
    ("CHATWOOT_URL", "chat.example.com"), ("MELI_API_URL", "ftp://x"), ("QUESTIONS_POLL_SECONDS", "-1"),
    ("MESSAGES_POLL_SECONDS", "soon"), ("PORT", "99999"), ("LOG_LEVEL", "LOUD"), ("MELI_USER_ID", "me"),
    ("MELI_USE_PKCE", "maybe"), ("MELI_SITE_ID", "BRASIL"), ("DISPLAY_TIMEZONE", "Brasilia"),
    ("DISPLAY_TIMEZONE", "../../etc/passwd"),
])
def test_it_exits_2_naming_a_malformed_variable(tmp_path, name, value):
    result = run_config(base_env(tmp_path, **{name: value}))
    assert result.returncode == 2
    assert name in result.stderr and "example" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_reports_every_problem_one_per_line(tmp_path):
    result = run_config(base_env(tmp_path, MELI_APP_ID="x", CHATWOOT_URL=None, PORT="0"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 3


def test_it_never_echoes_a_secret_in_errors(tmp_path):
    result = run_config(base_env(tmp_path, MELI_APP_ID="not-a-number", CHATWOOT_WEBHOOK_SECRET=",,,"))
    assert result.returncode == 2
    for value in SECRETS.values():
        for piece in value.split(","):
            assert piece not in result.stderr + result.stdout


def test_it_requires_the_webhook_secret_only_for_the_listener(tmp_path):
    env = base_env(tmp_path, CHATWOOT_WEBHOOK_SECRET=None)
    load_settings(env)
    with pytest.raises(ConfigError) as err:
        load_settings(env, require_webhook_secret=True)
    assert "CHATWOOT_WEBHOOK_SECRET" in err.value.problems[0]


def test_it_refuses_the_same_inbox_for_both_flows(tmp_path):
    with pytest.raises(ConfigError):
        load_settings(base_env(tmp_path, CHATWOOT_MESSAGES_INBOX_ID="1"))


def test_the_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("MELI_APP_ID=999\nCHATWOOT_ACCOUNT_ID=7\n")
    env = base_env(tmp_path, CHATWOOT_ACCOUNT_ID=None)
    clean = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT, **env}
    out = subprocess.run([sys.executable, "-c", "import config; s = config.settings_or_exit();"
                          " print(s.meli_app_id, s.chatwoot_account_id)"], cwd=str(tmp_path), env=clean,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["123456", "7"]


def test_env_example_lists_every_contract_variable():
    contract = os.path.join(ROOT, "..", "shared", "contract.md")
    if not os.path.exists(contract):
        pytest.skip("shared/contract.md not beside the repository")
    import re
    names = set(re.findall(r"^\| `([A-Z_]+)`", open(contract).read(), re.M))
    example = open(os.path.join(ROOT, ".env.example")).read()
    missing = [n for n in names if f"{n}=" not in example]
    assert names and not missing


@pytest.mark.parametrize("value", ["change-me", "CHANGEME", "secret", "your-secret", "<segredo>",
                                   "whsec-real-1,change-me"])
def test_the_listener_refuses_an_example_webhook_secret(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        load_settings(base_env(tmp_path, CHATWOOT_WEBHOOK_SECRET=value), require_webhook_secret=True)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("CHATWOOT_WEBHOOK_SECRET: still holds an example value")


def test_an_example_secret_of_a_required_variable_gets_one_readable_line(tmp_path):
    result = run_config(base_env(tmp_path, MELI_SECRET_KEY="change-me", CHATWOOT_API_TOKEN="changeme"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split()[2] for line in lines] == ["MELI_SECRET_KEY:", "CHATWOOT_API_TOKEN:"]
    assert all("example value" in line for line in lines)


def test_an_untouched_example_secret_counts_as_unset_where_it_is_optional(tmp_path):
    # `setup` runs before the Mercado Livre app and the webhook secret exist.
    settings = load_settings(base_env(tmp_path, MELI_SECRET_KEY="change-me", CHATWOOT_WEBHOOK_SECRET="change-me"),
                             require_inboxes=False)
    assert settings.meli_secret_key is None and settings.chatwoot_webhook_secrets == ()


def test_a_real_secret_that_merely_contains_a_placeholder_word_is_kept(tmp_path):
    settings = load_settings(base_env(tmp_path, CHATWOOT_WEBHOOK_SECRET="my-secret-7f3a9c"),
                             require_webhook_secret=True)
    assert settings.chatwoot_webhook_secrets == ("my-secret-7f3a9c",)


def test_dates_are_shown_in_brasilia_time_unless_another_zone_is_set(tmp_path):
    assert load_settings(base_env(tmp_path)).display_timezone == "America/Sao_Paulo"
    assert load_settings(base_env(tmp_path, DISPLAY_TIMEZONE="America/Manaus")).display_timezone == "America/Manaus"
    with pytest.raises(ConfigError) as refused:
        load_settings(base_env(tmp_path, DISPLAY_TIMEZONE="Horario de Brasilia"))
    assert refused.value.problems == ["DISPLAY_TIMEZONE: is not a known time zone (an IANA name such as "
                                      "America/Manaus or America/Argentina/Buenos_Aires) "
                                      "(example: DISPLAY_TIMEZONE=America/Sao_Paulo)"]


def test_no_test_process_can_start_in_the_repository_root_where_a_dotenv_would_be_loaded():
    """README step one is `cp .env.example .env`: a test process in the root would load it."""
    with pytest.raises(AssertionError, match="repository root"):
        subprocess.run([sys.executable, "-c", "pass"], cwd=ROOT, timeout=30)


def test_the_tests_processes_run_in_a_copy_of_the_repository_that_never_holds_its_dotenv(tmp_path):
    from tests.e2e import shadow_of
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.py").symlink_to(os.path.join(ROOT, "config.py"))
    (repo / ".env").write_text("MELI_APP_ID=666\nCHATWOOT_URL=https://hostile.example\n")
    app = shadow_of(Path(repo), tmp_path / "app")
    assert (app / "config.py").exists() and not (app / ".env").exists()
    env = {"PATH": os.environ.get("PATH", ""), **base_env(tmp_path, MELI_APP_ID=None)}
    result = subprocess.run([sys.executable, "-c", "import config; config.settings_or_exit()"], cwd=app, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "MELI_APP_ID: is required" in result.stderr
    assert Path(APP_DIR).resolve() != Path(ROOT).resolve() and not (APP_DIR / ".env").exists()
