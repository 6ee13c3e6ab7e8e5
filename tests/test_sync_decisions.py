"""Pure sync decisions, tested without HTTP."""

from bridge.sync.questions import (
    change_for,
    conversation_attributes,
    first_message,
    questions_that_left,
    questions_to_create,
)
from bridge.sync.sales import (
    in_order,
    is_migrated,
    message_content,
    messages_to_mirror,
    pack_ids_from_unread,
    sale_attributes,
)

SELLER = 555


def msg(mid, sender, created, text="oi", **extra):
    return {"id": mid, "from": {"user_id": sender}, "to": {"user_id": 1}, "text": text,
            "message_date": {"created": created}, **extra}


def test_new_questions_are_those_not_yet_created_oldest_first():
    unanswered = [{"id": 1}, {"id": 2}, {"id": 3}]
    assert [q["id"] for q in questions_to_create(unanswered, {"2"})] == [1, 3]


def test_questions_that_left_the_list_are_found():
    links = [{"external_id": "1"}, {"external_id": "2"}]
    assert questions_that_left(links, {"1"}) == [{"external_id": "2"}]


def test_an_answer_given_elsewhere_is_mirrored_but_ours_only_resolves():
    assert change_for({"status": "ANSWERED"}, answer_known=False) == ("mirror_answer", None)
    assert change_for({"status": "ANSWERED"}, answer_known=True) == ("resolve", None)


def test_deleted_banned_and_review_states_get_a_note():
    for status in ("DELETED", "BANNED", "UNDER_REVIEW", "CLOSED_UNANSWERED", "DISABLED"):
        action, note = change_for({"status": status}, answer_known=False)
        assert action == "note" and note


def test_the_first_message_has_question_title_and_link():
    text = first_message({"text": "Tem azul?", "item_id": "MLB1"},
                         {"title": "Caneca", "permalink": "https://produto.test/MLB1"})
    assert text.splitlines() == ["Tem azul?", "", "Produto: Caneca", "https://produto.test/MLB1"]


def test_conversation_attributes_name_question_and_item():
    attrs = conversation_attributes({"id": 7, "item_id": "MLB1"}, {"title": "Caneca", "permalink": "u"})
    assert attrs["meli_question_id"] == "7" and attrs["meli_item_id"] == "MLB1"
    assert attrs["meli_item_title"] == "Caneca" and attrs["meli_item_url"] == "u"


def test_pack_ids_come_from_unread_resources_once_each():
    results = [{"resource": "/packs/2000001/sellers/555"}, {"resource": "/packs/2000001/sellers/555"},
               {"resource": "/packs/42/sellers/555"}, {"resource": "garbage"}]
    assert pack_ids_from_unread(results) == ["2000001", "42"]


def test_messages_are_ordered_by_creation_not_page_order():
    page = [msg("b", 9, "2026-11-20T10:00:02"), msg("a", 9, "2026-11-20T10:00:01")]
    assert [m["id"] for m in in_order(page)] == ["a", "b"]


def test_buyer_messages_come_in_and_outside_seller_messages_go_out():
    page = [msg("1", 9, "t1"), msg("2", SELLER, "t2"), msg("3", SELLER, "t3"), msg("4", 9, "t4")]
    plan = messages_to_mirror(page, SELLER, known_ids={"1"}, bridge_ids={"3"})
    assert [(m["id"], d) for m, d in plan] == [("2", "outgoing"), ("4", "incoming")]


def test_a_thread_with_the_meli_agent_is_migrated():
    assert is_migrated([msg("1", 3037675074, "t")])
    assert not is_migrated([msg("1", 9, "t")])


def test_a_moderated_message_says_so():
    content = message_content(msg("1", SELLER, "t", text="me liga 1199999", status="rejected",
                                  message_moderation={"status": "rejected", "reason": "PERSONAL_DATA"}), "outgoing")
    assert "moderação" in content and "dados pessoais" in content and "não a recebeu" in content


def test_sale_attributes_list_orders_items_total_and_link():
    orders = [{"id": 11, "total_amount": 10.5, "order_items": [{"item": {"title": "Caneca"}}]},
              {"id": 12, "total_amount": 4.5, "order_items": [{"item": {"title": "Pires"}}]}]
    attrs = sale_attributes("900", orders)
    assert attrs["meli_pack_id"] == "900" and attrs["meli_order_ids"] == "11,12"
    assert attrs["meli_item_titles"] == "Caneca | Pires" and attrs["meli_total_amount"] == 15.0
    assert attrs["meli_sale_url"].endswith("/vendas/11/detalhe")
