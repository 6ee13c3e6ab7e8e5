"""Chatwoot application API: HTTP only, no sync decisions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

from bridge.http import HttpClient, PermanentError
from config import Settings

MAX_DOWNLOAD_BYTES = 25 * 1024 * 1024
MAX_REDIRECTS = 3
INCOMING, OUTGOING = "incoming", "outgoing"
FILTER_PAGE = 25  # conversations per page of Chatwoot's filter


class DownloadRefused(PermanentError):
    """An attachment URL we will not fetch (foreign host, too large)."""


def _host(url: str) -> str:
    """The host a URL points to, for a message (never the path: signed links carry tokens)."""
    try:
        return urlsplit(url).netloc[:100] or "endereço inválido"
    except ValueError:
        return "endereço inválido"


class ChatwootClient(HttpClient):
    service = "chatwoot"

    def __init__(self, settings: Settings, **kwargs):
        super().__init__(f"{settings.chatwoot_url}/api/v1/accounts/{settings.chatwoot_account_id}", **kwargs)
        self.settings = settings
        self.session.headers["api_access_token"] = settings.chatwoot_api_token
        self.host = urlsplit(settings.chatwoot_url).netloc.lower()

    # ---- contacts --------------------------------------------------------------------------

    def find_contact(self, identifier: str) -> dict | None:
        """Exact lookup by identifier (never the substring search)."""
        result = self._request("POST", "/contacts/filter", json={"payload": [{
            "attribute_key": "identifier", "filter_operator": "equal_to", "values": [identifier],
            "query_operator": None}]})
        for contact in (result or {}).get("payload") or []:
            if contact.get("identifier") == identifier:
                return contact
        return None

    def create_contact(self, name: str, identifier: str, inbox_id: int | None, source_id: str | None,
                       additional_attributes: dict | None = None) -> dict:
        """Returns the created contact; raises PermanentError(422) when the identifier exists
        (or the inbox source id belongs to another contact). No inbox: a contact alone."""
        body = {"name": name, "identifier": identifier, "additional_attributes": additional_attributes or {}}
        if inbox_id is not None:
            body.update(inbox_id=inbox_id, source_id=source_id)
        result = self._request("POST", "/contacts", json=body)
        payload = (result or {}).get("payload") or {}
        return payload.get("contact") or payload

    def create_contact_inbox(self, contact_id: int, inbox_id: int, source_id: str) -> dict:
        return self._request("POST", f"/contacts/{contact_id}/contact_inboxes",
                             json={"inbox_id": inbox_id, "source_id": source_id})

    def contact_conversations(self, contact_id: int) -> list[dict]:
        return (self._request("GET", f"/contacts/{contact_id}/conversations") or {}).get("payload") or []

    def delete_contact(self, contact_id: int) -> None:
        """Erasure (`forget-buyer --chatwoot`); raises PermanentError(404) when already gone."""
        self._request("DELETE", f"/contacts/{contact_id}")

    # ---- conversations -----------------------------------------------------------------------

    def delete_conversation(self, conversation_id: int) -> None:
        self._request("DELETE", f"/conversations/{conversation_id}")

    def create_conversation(self, *, source_id: str, inbox_id: int, contact_id: int, custom_attributes: dict,
                            additional_attributes: dict | None = None) -> dict:
        return self._request("POST", "/conversations", json={
            "source_id": source_id, "inbox_id": inbox_id, "contact_id": contact_id, "status": "open",
            "custom_attributes": custom_attributes, "additional_attributes": additional_attributes or {}},
            creates=True)

    def conversation(self, conversation_id: int) -> dict:
        return self._request("GET", f"/conversations/{conversation_id}")

    def filter_conversations(self, attribute_key: str, value: str, page: int = 1) -> list[dict]:
        """One page (FILTER_PAGE at most) of the conversations whose custom attribute equals `value`,
        whatever contact they belong to. Chatwoot drops the condition for a key the account has
        not defined, and then answers every conversation: callers check what comes back."""
        result = self._request("POST", "/conversations/filter", params={"page": page}, json={"payload": [{
            "attribute_key": attribute_key, "filter_operator": "equal_to", "values": [value],
            "query_operator": None}]}) or {}
        if isinstance(result.get("data"), dict):  # the conversation list as `GET /conversations` nests it
            result = result["data"]
        return [c for c in result.get("payload") or [] if isinstance(c, dict)]

    def set_status(self, conversation_id: int, status: str) -> None:
        self._request("POST", f"/conversations/{conversation_id}/toggle_status", json={"status": status})

    def set_custom_attributes(self, conversation_id: int, attributes: dict) -> None:
        """Replaces the whole hash: callers merge with what is there (agents set some in the sidebar)."""
        self._request("POST", f"/conversations/{conversation_id}/custom_attributes",
                      json={"custom_attributes": attributes})

    def set_labels(self, conversation_id: int, labels: list[str]) -> None:
        """Replaces the conversation's labels."""
        self._request("POST", f"/conversations/{conversation_id}/labels", json={"labels": labels})

    def set_priority(self, conversation_id: int, priority: str | None) -> None:
        """urgent | high | medium | low | None (Chatwoot 3.x and later)."""
        self._request("POST", f"/conversations/{conversation_id}/toggle_priority", json={"priority": priority})

    # ---- messages ------------------------------------------------------------------------------

    def messages(self, conversation_id: int, before: int | None = None) -> list[dict]:
        params = {"before": before} if before else None
        return (self._request("GET", f"/conversations/{conversation_id}/messages", params=params)
                or {}).get("payload") or []

    def all_messages(self, conversation_id: int, max_pages: int = 50):
        """Newest page first, then older ones (the API returns 20 at a time)."""
        before = None
        for _ in range(max_pages):
            page = self.messages(conversation_id, before)
            if not page:
                return
            yield from reversed(page)
            oldest = min(m["id"] for m in page)
            if before is not None and oldest >= before:
                return
            before = oldest

    def find_message_by_source(self, conversation_id: int, source_id: str) -> dict | None:
        for message in self.all_messages(conversation_id):
            if message.get("source_id") == source_id:
                return message
        return None

    def create_message(self, conversation_id: int, content: str | None, *, message_type: str,
                       private: bool = False, source_id: str | None = None,
                       files: list[tuple[str, bytes, str]] | None = None,
                       content_attributes: dict | None = None) -> dict:
        path = f"/conversations/{conversation_id}/messages"
        if not files:
            body: dict[str, Any] = {"content": content, "message_type": message_type, "private": private}
            if source_id:
                body["source_id"] = source_id
            if content_attributes:
                body["content_attributes"] = content_attributes
            return self._request("POST", path, json=body, creates=True)
        form = {"content": content or "", "message_type": message_type, "private": "true" if private else "false"}
        if source_id:
            form["source_id"] = source_id
        return self._request("POST", path, data=form, creates=True,
                             files=[("attachments[]", (name, data, ctype)) for name, data, ctype in files])

    def note(self, conversation_id: int, content: str, source_id: str | None = None) -> dict:
        return self.create_message(conversation_id, content, message_type=OUTGOING, private=True,
                                   source_id=source_id)

    def set_message_status(self, conversation_id: int, message_id: int, status: str,
                           external_error: str | None = None) -> None:
        body = {"status": status}
        if external_error:
            body["external_error"] = external_error
        self._request("PATCH", f"/conversations/{conversation_id}/messages/{message_id}", json=body)

    # ---- files ------------------------------------------------------------------------------------

    def allowed_download(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unbalanced "[" in the host
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == self.host

    def download(self, url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[bytes, str]:
        """Fetch an attachment from our Chatwoot, size-capped.

        Every hop is checked, redirects included: a redirect elsewhere (another host, or
        a storage service outside Chatwoot) is refused, so a crafted attachment cannot make
        the bridge fetch from an arbitrary address. The API token is never sent along:
        data_url is a signed link.
        """
        if not self.allowed_download(url):
            raise DownloadRefused("o endereço do anexo não é do Chatwoot configurado na ponte", code="foreign_host")
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._request("GET", url, raw=True, allow_redirects=False, stream=True,
                                     headers={"api_access_token": None})
            except ValueError:
                # requests parses a redirect's Location even when not following it; an
                # unparsable one ("https://[::1") is a redirect we would refuse anyway.
                raise DownloadRefused("o download foi redirecionado para um endereço inválido e, por segurança, "
                                      "o arquivo não foi baixado", code="foreign_redirect") from None
            if resp.is_redirect:
                location = resp.headers.get("Location", "")
                resp.close()
                try:
                    url = urljoin(url, location)
                except ValueError:
                    url = ""
                if not self.allowed_download(url):
                    raise DownloadRefused(f"o download foi redirecionado para fora do Chatwoot configurado "
                                          f"({_host(url)}) e, por segurança, o arquivo não foi baixado",
                                          code="foreign_redirect")
                continue
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                resp.close()
                raise DownloadRefused(f"file of {declared} bytes is over the {max_bytes}-byte limit", code="too_large")
            chunks, size = [], 0
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    resp.close()
                    raise DownloadRefused(f"file is over the {max_bytes}-byte limit", code="too_large")
                chunks.append(chunk)
            return b"".join(chunks), resp.headers.get("Content-Type", "application/octet-stream")
        raise DownloadRefused("too many redirects fetching an attachment", code="too_many_redirects")

    # ---- setup (administrator calls, used by `main.py setup` / `check`) --------------------------

    def profile(self) -> dict:
        """The token's user, with `accounts` [{id, name, role}]; lives outside the account path."""
        return self._request("GET", f"{self.settings.chatwoot_url}/api/v1/profile") or {}

    def inboxes(self) -> list[dict]:
        """The account's inboxes the token's user can see (every one, for an administrator)."""
        return (self._request("GET", "/inboxes") or {}).get("payload") or []

    def create_inbox(self, name: str) -> dict:
        # No automatic retry: Chatwoot does not deduplicate, so a retried create after a
        # lost answer makes a second inbox; setup is simply run again instead.
        return self._request("POST", "/inboxes", json={"name": name, "channel": {"type": "api", "webhook_url": ""}},
                             retry=False) or {}

    def conversation_attribute_definitions(self) -> list[dict]:
        """The account's custom attribute definitions for conversations (attribute_model 0)."""
        result = self._request("GET", "/custom_attribute_definitions", params={"attribute_model": 0})
        if isinstance(result, dict):
            result = result.get("payload") or []
        return [d for d in result or [] if isinstance(d, dict)]

    def create_conversation_attribute_definition(self, key: str, name: str, display_type: int,
                                                 description: str, values: list[str] | None = None) -> dict:
        # No automatic retry, as for inboxes: a create retried after a lost answer is refused as a
        # duplicate key at best; setup is simply run again instead.
        body = {"attribute_key": key, "attribute_display_name": name, "attribute_display_type": display_type,
                "attribute_model": 0, "attribute_description": description}
        if values is not None:
            body["attribute_values"] = values
        return self._request("POST", "/custom_attribute_definitions", json=body, retry=False) or {}

    def webhooks(self) -> list[dict]:
        """Account webhooks; Chatwoot nests them in payload.webhooks (some versions: a plain list)."""
        result = self._request("GET", "/webhooks") or {}
        payload = (result.get("payload") or []) if isinstance(result, dict) else result
        return (payload.get("webhooks") or []) if isinstance(payload, dict) else list(payload)

    def set_inbox_webhook(self, inbox_id: int, url: str) -> dict:
        """Point an API inbox's own webhook at `url`; Chatwoot answers with the inbox."""
        result = self._request("PATCH", f"/inboxes/{inbox_id}", json={"channel": {"webhook_url": url}})
        return result if isinstance(result, dict) else {}

    def reset_inbox_secret(self, inbox_id: int) -> dict:
        """A new signing secret for an API inbox (Chatwoot 4.13+); answers with the inbox."""
        result = self._request("POST", f"/inboxes/{inbox_id}/reset_secret", retry=False)
        return result if isinstance(result, dict) else {}

    def delete_webhook(self, webhook_id: int) -> None:
        self._request("DELETE", f"/webhooks/{webhook_id}")
