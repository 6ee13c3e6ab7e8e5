"""The only module that touches SQLite.

Both processes (the gunicorn listener and the poller) open the same file. WAL lets
readers run beside the single writer; every write is a short `BEGIN IMMEDIATE`
transaction so a writer waits for the lock up front (busy_timeout) instead of failing
half way. Network calls never happen while a transaction is open: the listener must
answer Chatwoot within 5 s whatever Mercado Livre is doing.

Crash windows. A remote side effect always comes before the commit that records it, so
a `kill -9` can fall between the two. Each such window has a name (the `crashpoint`
placed right after the remote call) and a way back:

Chatwoot
- `contact_created` (bridge.sync.contacts.ensure_contact): the buyer row stays `pending`; the next
  create gets 422 (identifier is unique) and the contact is found by exact filter.
- `contact_inbox_added` (bridge.sync.contacts._add_inbox): the inbox is not recorded on the buyer row;
  adding it again gets 422, which counts as done.
- `conversation_created` (bridge.sync.contacts.ensure_conversation): the question/pack/claim row is
  `pending` without conversation id; the conversation is searched by its `meli_<kind>_id`
  attribute across all contacts (Chatwoot's conversation filter, so also where an agent's merge
  of the buyer's contact into another carried it; the contact's own conversations when the
  account has not defined the attribute: `main.py setup` does), and not found it is created
  again only once the last create has settled (ensure.CREATE_SETTLE after it left, a time the
  row's data keeps). A lost answer (timeout, 5xx) is the same case without a crash: a create
  Chatwoot still holds is applied after the search. An agent answering in that conversation
  meanwhile names it (the listener records it for the row as a candidate:
  LinksStore.adopt_conversation). Any conversation a `pending` row remembers (adopted, or made
  before a crash in a later window) is used only once Chatwoot shows it in the item's inbox (an
  agent may have deleted it since) and, when adopted, Chatwoot's own attributes of it name the
  item (the webhook's need not be what Chatwoot stores).
- `question_message_created` (bridge.sync.questions.create_question): the row has its
  conversation but is `pending`; the message is looked up by source_id, and made again only
  once the last create has settled (bridge.sync.ensure: CREATE_SETTLE after it went out, a
  time the row's data keeps). A lost answer is the same case without a crash; so
  for the three windows below.
- `answer_mirrored` (bridge.sync.questions._mirror_answer): the answer row is `pending`;
  looked up by source_id, made again once settled.
- `question_followed` (bridge.sync.questions.follow_question): a state note or reopening is in
  Chatwoot but the question row still has the old state; notes carry a source_id that
  stays the same until that row changes, and are looked up before posting again.
- `sale_message_created` (bridge.sync.sales._mirror): the message row is `pending`; looked
  up by source_id, made again once settled.
- `moderation_reported` (bridge.sync.moderation.report_blocked_reply, for a sale): the moderation row is
  `pending` and the whole report is redone (status mark idempotent, note by source_id).
- `claim_message_created` (bridge.sync.claims._mirror): the claim_message row is `pending`;
  looked up by source_id, made again once settled. The claim's `last_updated` is stored only after every message
  and note, so the next poll syncs the claim again.
- `claim_event_shown` (bridge.sync.claims._event): a claim's summary, state, deadline or sale
  note (with its resolve or priority change) is in Chatwoot but the claim_event row is
  `pending`; the note is looked up by source_id (made again once settled), status and priority
  are idempotent.
- `claim_moderation_reported` (bridge.sync.moderation.report_blocked_reply, for a claim): the row is
  `pending` and the report is redone (failed mark idempotent, note looked up by source_id).
- `reply_reported` (bridge.replies.report.report_reply): reported_at is unset; the report is redone
  (status marks and resolving are idempotent, the note is looked up by source_id).

Mercado Livre
- `answer_posted` (bridge.replies.delivery._deliver_answer): the part stays `sending`. The questions sync
  sees the question ANSWERED; an answer equal to an in-flight part is ours, so it records
  it as sent and links it instead of mirroring it as answered elsewhere; the outbox then
  finishes the reply without posting. Had the sync not run, the retry's POST gets
  `not_unanswered_question` and the published text decides. (A lost response, e.g. a
  timeout after Mercado Livre applied the POST, is the same case without a crash.)
- `message_sent` (bridge.replies.delivery._deliver_message): the part stays `sending`. Once the send has
  settled (delivery.IN_DOUBT_SETTLE after it last left, stamped as it leaves the rate budget
  and again when its answer is lost: a request Mercado Livre still holds may be applied after
  we stopped waiting), the retry looks for it in the thread: a
  seller message with its text, created after its first attempt and not accounted for.
  Meanwhile the post-sale sync leaves a seller message equal to an in-flight part alone
  instead of mirroring it as sent outside Chatwoot. A lost response (timeout, 5xx) is
  the same case without a crash.
- `claim_message_sent` (bridge.replies.delivery._deliver_claim): the part stays `sending`. As for a sale
  message, the retry waits until the send has settled. Claim messages have no id: it
  counts the seller messages with the part's text since its first attempt that no sync
  accounted for, against sent parts with that text not adopted yet; the claims sync,
  meanwhile, leaves a seller message equal to an in-flight part alone.
- `attachment_uploaded` (bridge.replies.delivery._upload_files): the upload id is not recorded; the retry
  uploads again. The first upload is never used and expires (48 h): nobody sees it.
- `token_refreshed` (mercado_livre_api._refresh): the new pair is lost and the old
  refresh token is dead (single use). Nothing can recover it: the dead process's refresh
  lease is not waited for (its holder is gone), the next refresh gets invalid_grant, the
  authorization is marked for a person to renew, and /health says so.
- Exchanging an authorization code (listener callback, `main.py authorize --code`): a
  crash loses the tokens and the spent code; the person, still at the browser, sees no
  confirmation page and authorizes again.
- Marking a thread read (bridge.sync.sales._mark_read): the reading call that marks a page also
  shows buyer messages written a moment before it. The thread is flagged (threads.marking_since)
  before the call and those messages are mirrored from its answer; after a crash the flag
  makes the next poll sync the thread again first.

The other order is avoided too: a remote call that a commit would make impossible to
retry comes before that commit (a resolved sale is reopened before its new buyer
messages are recorded; once they are, nothing would say it still needs reopening).

A poller that restarts after kill -9 takes the poller lock and gives back the leases of
replies its dead predecessor held, so an interrupted reply resumes at once instead of
after LEASE_SECONDS. Tests set BRIDGE_CRASH_AT=<window> (with BRIDGE_TEST_HOOKS=1, see
bridge.testhooks) to be killed in a window.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import signal
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

from bridge import testhooks
from bridge.store.auth import AuthStore, TokenCipher
from bridge.store.cache import CacheStore
from bridge.store.items import ItemsStore
from bridge.store.jobs import JobsStore
from bridge.store.links import LinksStore
from bridge.store.notifications import NotificationsStore
from bridge.store.privacy import PrivacyStore
from bridge.store.replies import RepliesStore
from bridge.store.threads import ThreadsStore
from bridge.store.watermarks import WatermarksStore

log = logging.getLogger("bridge.db")

BUSY_TIMEOUT_MS = 15000
CHECKPOINT_WAIT_MS = 1000


# Read once: the crash windows' test hook costs one comparison when unset (and is unset
# outside the test suite, see bridge.testhooks).
_CRASH_AT = testhooks.value("BRIDGE_CRASH_AT")


def crashpoint(name: str) -> None:
    """Die like `kill -9` here when BRIDGE_CRASH_AT names this window (tests only)."""
    if _CRASH_AT is not None and _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


class DatabaseError(Exception):
    """The state file cannot be used; the message is one line for an operator."""


class Migration(NamedTuple):
    """One step of the schema; step n (from 0) takes the file from user_version n to n + 1."""
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (executescript would COMMIT our transaction)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _sql_step(description: str, script: str) -> Migration:
    statements = _statements(script)

    def apply(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)
    return Migration(description, apply)


def _replies_ids_never_reused(conn: sqlite3.Connection) -> None:
    """Rebuild `replies` with AUTOINCREMENT, keeping every row, column and index as it is.

    A rowid alone is reused: an erasure deleting the newest reply while its part was in flight
    gave its id to the next reply accepted, and the send's bookkeeping then marked that other
    buyer's reply delivered. The parts go through the rebuild too: dropping the parent first
    would delete them by cascade. Each table is rebuilt from its own stored definition, so
    columns added by earlier steps stay. The sequence starts above every id still named
    anywhere (moderation checks, given-up items, adopted claim parts), not only the rows kept.
    """
    definitions = {}
    for table in ("replies", "reply_parts"):
        definitions[table] = (
            conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0],
            [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
                                        " AND sql IS NOT NULL ORDER BY name", (table,))])
        conn.execute(f"CREATE TEMP TABLE kept_{table} AS SELECT * FROM main.{table}")
    conn.execute("DROP TABLE reply_parts")
    conn.execute("DROP TABLE replies")
    replies_sql, count = re.subn(r"\bid INTEGER PRIMARY KEY\b", "id INTEGER PRIMARY KEY AUTOINCREMENT",
                                 definitions["replies"][0], count=1)
    if count != 1:
        raise sqlite3.DatabaseError("replies.id is not the INTEGER PRIMARY KEY this step expects")
    definitions["replies"] = (replies_sql, definitions["replies"][1])
    for table in ("replies", "reply_parts"):
        table_sql, index_sqls = definitions[table]
        conn.execute(table_sql)
        conn.execute(f"INSERT INTO main.{table} SELECT * FROM temp.kept_{table}")
        conn.execute(f"DROP TABLE temp.kept_{table}")
        for index_sql in index_sqls:
            conn.execute(index_sql)
    named = [conn.execute("SELECT COALESCE(MAX(id), 0) FROM replies").fetchone()[0]]
    named += [int(r[0]) for r in conn.execute("SELECT item_id FROM item_attempts WHERE kind = 'reply'")
              if str(r[0]).isdigit()]
    for (key,) in conn.execute("SELECT external_id FROM links WHERE kind = 'moderation_check'"):
        reply_id = key.removeprefix("claim:").split(":", 1)[0]
        if reply_id.isdigit():
            named.append(int(reply_id))
    named += [int(r[0]) for r in conn.execute(
        "SELECT json_extract(data, '$.reply_id') FROM links WHERE kind = 'claim_message'"
        " AND json_extract(data, '$.reply_id') IS NOT NULL") if str(r[0]).isdigit()]
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'replies'")
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('replies', ?)", (max(named),))


# Ordered, small, described steps, appended only (the position is the on-disk version). Each
# runs with its version bump in one transaction; a step may be Python (a Migration whose
# `apply` reads and rewrites rows) as well as SQL.
MIGRATIONS: list[Migration] = [
    _sql_step("authorization: Mercado Livre tokens and single-use OAuth states", """
        CREATE TABLE meli_auth (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            user_id INTEGER,
            nickname TEXT,
            access_token TEXT,
            refresh_token TEXT,
            expires_at REAL,
            status TEXT NOT NULL DEFAULT 'missing',      -- missing | active | reauth_required
            status_reason TEXT,
            refresh_lease_owner TEXT,
            refresh_lease_until REAL NOT NULL DEFAULT 0,
            updated_at REAL
        );
        INSERT INTO meli_auth (id) VALUES (1);
        CREATE TABLE oauth_states (
            state TEXT PRIMARY KEY,
            code_verifier TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL
        );
    """),
    _sql_step("links: Mercado Livre ids to Chatwoot ids, pending until created", """
        CREATE TABLE links (
            kind TEXT NOT NULL,                 -- buyer | question | answer | pack | message
            external_id TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',  -- pending | created
            contact_id INTEGER,
            conversation_id INTEGER,
            message_id INTEGER,
            data TEXT,                          -- small JSON of ids and states, never buyer text
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, external_id)
        );
        CREATE INDEX links_by_conversation ON links (conversation_id, kind);
        CREATE INDEX links_by_status ON links (kind, status);
    """),
    _sql_step("outbox: accepted agent replies and their Mercado Livre parts", """
        -- One row per agent message accepted from a webhook. Its UNIQUE Chatwoot message
        -- id is also the record of deliveries already seen (account + inbox webhooks).
        CREATE TABLE replies (
            id INTEGER PRIMARY KEY,
            chatwoot_message_id INTEGER NOT NULL UNIQUE,
            conversation_id INTEGER NOT NULL,
            kind TEXT NOT NULL,                 -- answer | message
            target_id TEXT,                     -- question id or pack id
            status TEXT NOT NULL DEFAULT 'pending',  -- pending | sending | delivered | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_until REAL,
            error TEXT,                         -- short reason, shown as external_error
            note TEXT,                          -- private note for the agent
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            reported_at REAL                    -- outcome shown in Chatwoot
        );
        CREATE INDEX replies_due ON replies (status, next_attempt_at);
        CREATE INDEX replies_by_target ON replies (kind, target_id, status);
        CREATE INDEX replies_unreported ON replies (reported_at, status);
        -- One row per Mercado Livre call; a long post-sale reply is several ordered parts.
        CREATE TABLE reply_parts (
            reply_id INTEGER NOT NULL REFERENCES replies (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            text TEXT,                          -- cleared once delivered (LGPD)
            attachments TEXT,                   -- JSON list of files to upload with this part
            status TEXT NOT NULL DEFAULT 'pending',  -- pending | sending | sent
            remote_id TEXT,
            sent_at REAL,
            PRIMARY KEY (reply_id, seq)
        );
        CREATE INDEX reply_parts_by_remote_id ON reply_parts (remote_id);
    """),
    _sql_step("job runs, cache of items and users, received notifications", """
        CREATE TABLE job_runs (
            job TEXT PRIMARY KEY,
            last_start REAL,
            last_success REAL,
            last_error_at REAL,
            last_error TEXT,
            last_duration_ms INTEGER
        );
        CREATE TABLE cache (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            fetched_at REAL NOT NULL,
            PRIMARY KEY (kind, key)
        );
        CREATE TABLE notifications (
            id TEXT PRIMARY KEY,
            topic TEXT NOT NULL,
            resource TEXT NOT NULL,
            received_at REAL NOT NULL,
            processed_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT
        );
        CREATE INDEX notifications_due ON notifications (processed_at, next_attempt_at);
    """),
    _sql_step("post-sale threads: watermarks for the safety-net sweep, mark-reads in flight, poll cursors", """
        -- Ids and counts only, never text. A thread is re-read when its message count moved.
        CREATE TABLE threads (
            pack_id TEXT PRIMARY KEY,
            total INTEGER,                      -- messages when last fully handled; NULL = read it again
            last_message_id TEXT,
            active_at REAL NOT NULL,            -- last sign of life (sale updated, thread changed)
            checked_at REAL,                    -- last read of the thread (sync or sweep)
            marking_since REAL                  -- a mark-read in flight; still set = a crash, sync again
        );
        CREATE INDEX threads_sweep ON threads (active_at, checked_at);
        CREATE INDEX threads_marking ON threads (marking_since);
        CREATE TABLE poll_cursors (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,                -- JSON
            updated_at REAL NOT NULL
        );
    """),
    _sql_step("reply parts: time of the first send attempt, to tell our lost sends from older identical messages", """
        ALTER TABLE reply_parts ADD COLUMN first_attempt_at REAL;
    """),
    _sql_step("item_attempts: questions, sales, notifications and replies whose processing keeps failing", """
        -- One row per item that failed and has not succeeded since; success deletes it.
        -- Questions and sales are skipped by the polls until next_attempt_at; notifications
        -- and replies keep their own schedule and land here when given up, to be reported.
        CREATE TABLE item_attempts (
            kind TEXT NOT NULL,                 -- question | pack | notification | reply
            item_id TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,                    -- exception class and short reason, never buyer text
            first_failed_at REAL NOT NULL,
            last_failed_at REAL NOT NULL,
            gave_up_at REAL,                    -- the bound was reached: retried once a day from then on
            reported_at REAL,                   -- the give-up was logged and noted in Chatwoot
            PRIMARY KEY (kind, item_id)
        );
        CREATE INDEX item_attempts_unreported ON item_attempts (reported_at, gave_up_at);
    """),
    _sql_step("notifications: one pending row per topic and resource", """
        -- A notification for a resource that is already waiting adds nothing but a count:
        -- `repeats` tells the poller something changed while it was fetching.
        ALTER TABLE notifications ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
        UPDATE notifications SET processed_at = received_at WHERE processed_at IS NULL AND rowid NOT IN
            (SELECT MIN(rowid) FROM notifications WHERE processed_at IS NULL GROUP BY topic, resource);
        CREATE UNIQUE INDEX notifications_pending_once ON notifications (topic, resource)
            WHERE processed_at IS NULL;
    """),
    _sql_step("watermarks: what stays of a pruned or erased question or sale, so its history is not imported again", """
        -- Ids and Mercado Livre dates only: never a buyer id, name or text (docs/privacidade.md).
        CREATE TABLE watermarks (
            kind TEXT NOT NULL,                 -- question | pack
            external_id TEXT NOT NULL,          -- question id or pack id
            last_message_id TEXT,               -- newest message of a completely handled thread
            last_message_at REAL,               -- its Mercado Livre creation date (epoch seconds)
            closed_at REAL,                     -- rows pruned or erased: nothing up to the mark is imported again
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, external_id)
        );
        -- Retention and erasure find a buyer's rows, and a sale's messages, without a full scan.
        CREATE INDEX links_by_buyer ON links (kind, CAST(json_extract(data, '$.buyer_id') AS TEXT));
        CREATE INDEX links_by_contact ON links (contact_id);
        CREATE INDEX links_message_by_pack ON links (json_extract(data, '$.pack_id')) WHERE kind = 'message';
    """),
    _sql_step("replies: the receiver a claim reply was written for (complainant or mediator)", """
        -- Read from the conversation's `meli_claim_reply_to` when the webhook is accepted:
        -- the agent's choice at the time of writing, not whatever the sidebar says later.
        ALTER TABLE replies ADD COLUMN receiver TEXT;
    """),
    _sql_step("reply parts: time of the latest send attempt, so a send in doubt is looked for only once it has settled",
              """
        ALTER TABLE reply_parts ADD COLUMN last_attempt_at REAL;
    """),
    Migration("replies: an id is never used again once deleted (AUTOINCREMENT), counting on from the highest"
              " id any row still names", _replies_ids_never_reused),
    _sql_step("replies: whom the agent addressed a claim reply to, beside the receiver it goes to", """
        -- `receiver` is now final from acceptance (every part goes there); `addressed` is the
        -- attribute's choice, kept so the agent is told when the reply went to the other one.
        ALTER TABLE replies ADD COLUMN addressed TEXT;
    """),
    _sql_step("poller heartbeat: the working poller says it is alive and what its jobs are doing", """
        -- One row: only the poller holding the poller lock writes it (bridge.admin.health reads it).
        CREATE TABLE poller_heartbeat (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,                 -- the container's hostname: which of two containers works
            started_at REAL NOT NULL,           -- when this poller became the working one
            beat_at REAL NOT NULL,
            running TEXT NOT NULL DEFAULT '{}'  -- JSON {job: {"since": start, "progress": last progress}}
        );
    """),
]

SCHEMA_VERSION = len(MIGRATIONS)


# ---- backup files: checked, staged and swapped in (main.py restore) ------------------------------


def _remove_if_present(path: str) -> bool:
    try:
        os.remove(path)
        return True
    except FileNotFoundError:
        return False


def _fsync_path(path: str) -> None:
    """Flush a file's (or a directory's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def match_owner(path: str, reference: str) -> None:
    """Run as root (a console opened as root), give `path` the owner of `reference`: the
    bridge's processes run as their own user and must still write what this command made."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(reference)
        os.chown(path, st.st_uid, st.st_gid)
    except OSError:
        pass


def inspect_backup(path: str) -> int:
    """The schema version of a bridge database file this code can use; DatabaseError otherwise.

    Refused: a file that is not SQLite, a SQLite file without the bridge's tables, a damaged
    one, and one of a newer schema than this code knows (an older one is migrated when the
    processes start).
    """
    if not os.path.isfile(path):
        raise DatabaseError(f"{path} is not a file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open {path}: {exc}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version < 1 or "meli_auth" not in tables:
            raise DatabaseError(f"{path} is a SQLite file but not a bridge database")
        if version > SCHEMA_VERSION:
            raise DatabaseError(f"{path} has schema version {version}, newer than this code knows "
                                f"({SCHEMA_VERSION}); restore it with the newer version of the bridge")
        problem = conn.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise DatabaseError(f"{path} is damaged ({problem})")
        return version
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{path} is not a bridge database ({exc})") from None
    finally:
        conn.close()


def stage_restore(source: str, database_path: str) -> str:
    """A checked, synced copy of `source` beside the database, ready for `swap_in`; returns its path.

    Copied through SQLite (any `-wal` of the source included) into the database's own
    directory, so the swap is a rename on one file system.
    """
    inspect_backup(source)
    staged = database_path + ".restoring"
    try:
        _remove_if_present(staged)
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dest = sqlite3.connect(staged)
        try:
            src.backup(dest)
            dest.execute("PRAGMA journal_mode = DELETE")
        finally:
            dest.close()
            src.close()
        _fsync_path(staged)
    except (sqlite3.Error, OSError) as exc:
        _remove_if_present(staged)
        raise DatabaseError(f"cannot copy {source} beside {database_path}: {exc}") from None
    try:
        inspect_backup(staged)
    except DatabaseError:
        _remove_if_present(staged)
        raise
    return staged


def swap_in(staged: str, database_path: str) -> list[str]:
    """Put a staged copy in place of the database; returns the stale files removed.

    Only while no process has the database open. The old `-wal` and `-shm` go first: left
    beside the new file, SQLite would replay the old pages into it.
    """
    removed = [database_path + suffix for suffix in ("-wal", "-shm") if _remove_if_present(database_path + suffix)]
    directory = os.path.dirname(os.path.abspath(database_path))
    match_owner(staged, database_path if os.path.exists(database_path) else directory)
    os.replace(staged, database_path)
    _fsync_path(os.path.dirname(os.path.abspath(database_path)))
    return removed


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock; worth retrying."""
    return "locked" in str(exc) or "busy" in str(exc)


def _row(row: sqlite3.Row | None) -> dict | None:
    return dict(row) if row is not None else None


class Database:
    """One SQLite file; one connection per thread (sqlite3 objects are not shared).

    Each subject's queries and commands live in a store hanging off it (`db.replies.claim(...)`),
    all writing through `write()`.
    """

    def __init__(self, path: str, token_keys: Sequence[str] = ()):
        """`token_keys`: TOKEN_ENCRYPTION_KEY's keys (newest first) for the secrets the auth store keeps."""
        self.path = path
        self.auth = AuthStore(self, TokenCipher(token_keys))
        self.links = LinksStore(self)
        self.replies = RepliesStore(self)
        self.notifications = NotificationsStore(self)
        self.items = ItemsStore(self)
        self.threads = ThreadsStore(self)
        self.watermarks = WatermarksStore(self)
        self.jobs = JobsStore(self)
        self.cache = CacheStore(self)
        self.privacy = PrivacyStore(self)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._poller_lock = None

    # ---- connection and schema -------------------------------------------------------

    def open(self) -> "Database":
        """Create the directory and the schema; raise DatabaseError with one clear line."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create the database directory {directory}: {exc.strerror}") from None
        if not os.access(directory, os.W_OK):
            raise DatabaseError(f"the database directory {directory} is not writable by this user")
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            raise DatabaseError(f"the database file {self.path} is not readable and writable by this user")
        try:
            self.migrate()
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot use {self.path} as the bridge's database: {exc}") from None
        return self

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid != os.getpid():
            # Inherited through fork (gunicorn preload): SQLite connections must not cross
            # processes. Drop it without closing; the parent still owns it.
            conn = None
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._switch_to_wal(conn)
            if mode.lower() != "wal":
                raise DatabaseError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            conn.execute("PRAGMA foreign_keys = ON")
            # Deleted rows (erasure, retention, reply text) are zeroed, not left in free pages.
            conn.execute("PRAGMA secure_delete = ON")
            # FULL: an acknowledged reply must survive a power cut, not only kill -9.
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @staticmethod
    def _switch_to_wal(conn: sqlite3.Connection) -> str:
        """`PRAGMA journal_mode = WAL`, retried while another process holds the file.

        On a fresh file several processes switch at once; the switch needs an exclusive
        lock and SQLite answers "database is locked" at once instead of calling the busy
        handler (a shared lock upgrading could deadlock), so busy_timeout does not help.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.002
        while True:
            try:
                return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 0.1)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction taking the lock up front.

        Threads of one process queue on a Python lock (woken at once, in order); between
        processes, BEGIN IMMEDIATE is retried every millisecond or so. SQLite's own busy
        handler sleeps in growing steps up to 100 ms, which under a burst of webhooks
        turned a 1 ms commit into a 150 ms acknowledgement.
        """
        conn = self.conn()
        with self._write_lock:
            self._begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @staticmethod
    def _begin_immediate(conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(random.uniform(0.0005, 0.002))
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def one(self, sql: str, params: tuple | dict = ()) -> dict | None:
        return _row(self.conn().execute(sql, params).fetchone())

    def all(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        return [dict(r) for r in self.conn().execute(sql, params).fetchall()]

    def schema_version(self) -> int:
        return self.conn().execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Apply pending steps; safe when both processes start at the same moment."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path} has schema version {current}, newer than this code knows "
                f"({SCHEMA_VERSION}); run the newer version of the bridge or restore a backup")
        while current < SCHEMA_VERSION:
            with self.write() as conn:
                # Re-read under the write lock: the other process may have just migrated.
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current >= SCHEMA_VERSION:
                    break
                step = MIGRATIONS[current]
                step.apply(conn)
                conn.execute(f"PRAGMA user_version = {current + 1}")
            log.info("database migrated to version %d: %s", current + 1, step.description)
            current += 1

    def backup_to(self, target: str) -> int:
        """Copy the database to `target` with SQLite's backup API; returns the pages copied.

        A copy of the file alone would miss what is still only in `-wal`; this reads one
        consistent snapshot, and in WAL mode neither process waits for it. The copy is written
        beside `target` and renamed into place once synced, so a file of that name is always a
        whole backup; it is a single file (rollback journal), readable without its `-wal`.
        """
        if os.path.exists(target):
            raise DatabaseError(f"{target} already exists; choose a new file name")
        partial = target + ".partial"
        try:
            _remove_if_present(partial)
            dest = sqlite3.connect(partial)
            try:
                self.conn().backup(dest)
                dest.execute("PRAGMA journal_mode = DELETE")
                pages = dest.execute("PRAGMA page_count").fetchone()[0]
            finally:
                dest.close()
            _fsync_path(partial)
            match_owner(partial, os.path.dirname(os.path.abspath(self.path)))
            os.replace(partial, target)
            _fsync_path(os.path.dirname(os.path.abspath(target)))
            return pages
        except (sqlite3.Error, OSError) as exc:
            _remove_if_present(partial)
            raise DatabaseError(f"cannot write the backup {target}: {exc}") from None

    def vacuum(self, wait_seconds: float = 10.0) -> dict:
        """Rebuild the file without its free pages (VACUUM), then empty the `-wal` it went through.

        VACUUM takes the write lock for as long as it runs: the other processes' writes wait
        (up to their busy timeout) and reads go on. If another writer holds the lock for more
        than `wait_seconds`, DatabaseError says so and nothing changed.
        Returns the sizes in bytes (file + `-wal`) before and after.
        """
        before = self.size_bytes()
        conn = self.conn()
        conn.execute(f"PRAGMA busy_timeout = {int(wait_seconds * 1000)}")
        try:
            with self._write_lock:
                conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise DatabaseError(f"another process kept the database busy for over {wait_seconds:.0f}s; "
                                    f"nothing was changed, try again") from None
            raise DatabaseError(f"VACUUM failed: {exc}") from None
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # VACUUM in WAL mode writes the new pages through the -wal: fold it back now.
        checkpoint = self.compact()
        return {"before": before, "after": self.size_bytes(), "wal_busy": checkpoint["busy"]}

    def check(self) -> None:
        """Raise sqlite3.Error when the file cannot be read (for /health)."""
        self.conn().execute("SELECT 1 FROM meli_auth").fetchone()

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    # ---- the one poller ------------------------------------------------------------------------

    def hold_poller_lock(self) -> bool:
        """Become the only poller on this database for the life of the process.

        False when another poller holds it (e.g. `--once` beside the running service).
        The kernel drops the lock when its holder dies, kill -9 included.
        """
        if self._poller_lock is not None:
            return True
        try:
            handle = open(self.path + ".poller.lock", "a")
        except OSError as exc:
            log.warning("poller lock unavailable (%s): interrupted replies wait for their lease", exc.strerror)
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._poller_lock = handle
        return True

    def poller_running(self) -> bool:
        """True while a poller holds this database's poller lock (`hold_poller_lock`)."""
        if self._poller_lock is not None:
            return False
        try:
            # Read only, never created: a lock file made by another user would shut the poller out.
            handle = open(self.path + ".poller.lock")
        except OSError:
            return False  # no poller ever ran here
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            handle.close()  # closing drops the lock taken just now
        return False

    def wait_for_poller_lock(self, stop: threading.Event) -> bool:
        """Block until this process holds the poller lock (True), or until `stop` is set (False).

        A second poller on the same database (two containers on one volume: a redeploy starts
        the new one before stopping the old) waits here, and the kernel hands it the lock the
        moment the working one's process ends, kill -9 included.
        """
        if self.hold_poller_lock():
            return True
        try:
            handle = open(self.path + ".poller.lock", "a")
        except OSError as exc:
            log.warning("poller lock unavailable (%s): working without it", exc.strerror)
            return True
        taken = threading.Event()

        def take() -> None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # blocks; a daemon thread, so a stop does not wait for it
            taken.set()
        threading.Thread(target=take, name="poller-lock", daemon=True).start()
        while not taken.wait(0.5):
            if stop.is_set():
                return False
        self._poller_lock = handle
        return True

    # ---- housekeeping -------------------------------------------------------------------------

    def compact(self) -> dict:
        """Make deleted rows unreadable from the files: fold the WAL into the database and empty it.

        Deleted content is zeroed in the database pages (secure_delete), but the `-wal` file
        still holds the pages as they were until a TRUNCATE checkpoint. `busy` = 1 when a
        reader kept it from finishing; the next housekeeping tries again.
        """
        conn = self.conn()
        # TRUNCATE holds the writer lock while it waits for readers: wait briefly, not the
        # full busy timeout, or a webhook's commit would wait behind it.
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            with self._write_lock:
                busy, wal_pages, moved = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return {"busy": busy, "wal_pages": wal_pages, "checkpointed": moved}

    def prune(self, now: float, keep_days: float = 30.0) -> dict:
        """Forget what can no longer matter, so the state file does not grow forever.

        Reported replies older than `keep_days` can no longer be redelivered by Chatwoot
        (it does not retry), so their dedupe record is useless; links are kept: they are
        what prevents duplicates in Chatwoot (db.privacy.apply_retention removes them with their
        question or sale).
        """
        cutoff = now - keep_days * 86400
        with self.write() as conn:
            counts = {
                "notifications": conn.execute("DELETE FROM notifications WHERE processed_at < ?",
                                              (now - 7 * 86400,)).rowcount,
                "oauth_states": conn.execute("DELETE FROM oauth_states WHERE expires_at < ?",
                                             (now - 86400,)).rowcount,
                "cache": conn.execute("DELETE FROM cache WHERE fetched_at < ?", (now - 7 * 86400,)).rowcount,
                # A sale's delivered replies stay while the sale does: their remote ids are
                # what tells the bridge's own messages in the thread from the seller's others.
                "replies": conn.execute("DELETE FROM replies WHERE reported_at < ? AND status IN"
                                        " ('delivered', 'failed') AND (kind != 'message' OR NOT EXISTS"
                                        " (SELECT 1 FROM links p WHERE p.kind = 'pack'"
                                        " AND p.external_id = replies.target_id))", (cutoff,)).rowcount,
            }
        return counts
