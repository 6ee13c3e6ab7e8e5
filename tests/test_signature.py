"""Chatwoot webhook signatures: a pure function, fixed vectors."""

from bridge.signature import token_matches, verify_signature

SECRET = "whsec-one-5f3a"
BODY = b'{"event":"message_created","id":1}'
TS = "1763640000"
# Computed once, outside Python, with:
#   printf '%s.%s' 1763640000 '{"event":"message_created","id":1}' | openssl dgst -sha256 -hmac whsec-one-5f3a
VECTOR = "sha256=4987e0d2a0ec700709b90b6e0fb307fe5a2dbdd91390151f97e57417416ccea2"


def headers(signature=VECTOR, timestamp=TS):
    out = {}
    if signature is not None:
        out["X-Chatwoot-Signature"] = signature
    if timestamp is not None:
        out["X-Chatwoot-Timestamp"] = timestamp
    return out


def test_a_correct_signature_verifies():
    assert verify_signature(BODY, headers(), [SECRET], now=int(TS)) == (True, "ok")


def test_any_configured_secret_verifies():
    assert verify_signature(BODY, headers(), ["old-secret", SECRET], now=int(TS))[0]


def test_a_tampered_body_is_refused():
    assert verify_signature(BODY.replace(b"1", b"2"), headers(), [SECRET], now=int(TS)) == (False,
                                                                                             "invalid signature")


def test_a_tampered_timestamp_is_refused():
    assert not verify_signature(BODY, headers(timestamp=str(int(TS) + 1)), [SECRET], now=int(TS))[0]


def test_a_wrong_secret_is_refused():
    assert not verify_signature(BODY, headers(), ["another"], now=int(TS))[0]


def test_a_timestamp_older_than_five_minutes_is_refused():
    assert verify_signature(BODY, headers(), [SECRET], now=int(TS) + 301)[1] == "timestamp outside the allowed window"
    assert verify_signature(BODY, headers(), [SECRET], now=int(TS) + 299)[0]


def test_a_timestamp_from_the_future_is_refused():
    assert not verify_signature(BODY, headers(), [SECRET], now=int(TS) - 301)[0]


def test_missing_headers_are_refused():
    assert verify_signature(BODY, headers(signature=None), [SECRET], now=int(TS)) == (False, "missing signature")
    assert verify_signature(BODY, headers(timestamp=None), [SECRET], now=int(TS)) == (False, "missing signature")


def test_a_malformed_timestamp_is_refused():
    assert verify_signature(BODY, headers(timestamp="soon"), [SECRET], now=int(TS))[1] == "malformed timestamp"


def test_a_signature_without_prefix_is_refused():
    assert not verify_signature(BODY, headers(signature=VECTOR.removeprefix("sha256=")), [SECRET], now=int(TS))[0]


def test_no_configured_secret_verifies_nothing():
    assert not verify_signature(BODY, headers(), [], now=int(TS))[0]


def test_the_url_token_must_match_a_secret_exactly():
    assert token_matches(SECRET, ["x", SECRET])
    assert not token_matches(SECRET[:-1], [SECRET])
    assert not token_matches("", [SECRET])
    assert not token_matches(None, [SECRET])


def test_a_timestamp_of_non_ascii_digits_is_refused_not_an_error():
    for timestamp in ("١٧٦٣٦٤٠٠٠٠", "²³", "9" * 5000, " 1763640000", "-1"):
        assert verify_signature(BODY, headers(timestamp=timestamp), [SECRET], now=int(TS)) == (
            False, "malformed timestamp")


def test_the_signature_header_may_carry_surrounding_spaces():
    assert verify_signature(BODY, headers(signature=f" {VECTOR} "), [SECRET], now=int(TS))[0]
