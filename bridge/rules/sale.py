"""A sale as both sides of the post-sale flow need it: its orders and its buyer."""

from __future__ import annotations

from bridge.http import PermanentError
from bridge.services import Services


def sale_context(s: Services, pack_id: str, messages: list[dict], resource_kind: str | None = None) -> dict:
    """Orders, buyer and items of a pack (an order without pack uses its order id)."""
    if resource_kind is None:
        names = {r.get("name") for m in messages for r in m.get("message_resources") or []}
        resource_kind = "packs" if "packs" in names else "orders" if "orders" in names else None
    orders: list[dict] = []
    if resource_kind != "orders":
        try:
            pack = s.meli.pack(pack_id)
            orders = [s.meli.order(str(o["id"])) for o in pack.get("orders") or []]
        except PermanentError as exc:
            if exc.status != 404:
                raise
    if not orders:
        orders = [s.meli.order(pack_id)]
    buyer = orders[0].get("buyer") or {}
    return {"orders": orders, "buyer_id": buyer.get("id"), "nickname": buyer.get("nickname")}
