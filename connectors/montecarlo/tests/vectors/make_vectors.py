#!/usr/bin/env python3
"""Golden vectors for x-mcd-signature, computed the way Monte Carlo's reference verifier does:

    hmac.new(secret, urlencode(json.loads(body)).encode("utf-8"), hashlib.sha512).hexdigest()

Writes vectors.json next to this file: for each case the body text, the secret, the signed
text (`canonical`) and the signature; both are null when the reference code raises on the
body (it could never have signed it). Standard library only:

    python3 connectors/montecarlo/tests/vectors/make_vectors.py
"""
import hashlib
import hmac
import json
import os
import sys
from urllib.parse import urlencode

SECRET = "whmc-3f9a1c0e7b5d"

# Bodies are written out as text, so key order, spacing, number spelling and escapes are
# exactly what the verifier under test receives.
CASES = [
    (
        "legacy_incident",
        SECRET,
        r'''{"account": {"id": "0a9b8c7d-1111-4222-8333-944455556666"}, "action": "incident",
 "type": "open_custom_rule_anomaly_incident", "version": "v0.1",
 "payload": {"incident_id": "7f1e2d3c-aaaa-4bbb-8ccc-ddddeeeeffff",
  "url": "https://getmontecarlo.com/incidents/7f1e2d3c-aaaa-4bbb-8ccc-ddddeeeeffff",
  "group_id": null,
  "event_list": [{"table_name": null,
   "rule": {"uuid": "5c4b3a29-0000-4111-8222-333344445555", "rule_type": "custom_sql",
    "description": "Too many failed client transactions",
    "comparisons": [{"full_table_id": "analytics:prod.client_txn", "metric": "custom_sql",
      "operator": "GT", "threshold": 49.0}]},
   "data": {"metric_display_name": "Custom SQL",
    "hits": [{"measurement_timestamp": "Jan 15, 06:10PM", "value": "50.0", "value_rounded": "50"}],
    "rule_comparisons": [{"operator": ">", "threshold": "49.0"}]}}]}}''',
    ),
    (
        "alert_status_updated",
        SECRET,
        r'''{"account": {"id": "0a9b8c7d-1111-4222-8333-944455556666"}, "action": "alert",
 "type": "alert.status_updated",
 "payload": {"alert_id": "al_42", "url": "https://getmontecarlo.com/alerts/al_42",
  "alert_feedback": "work_in_progress", "declared_alert_severity": "SEV-2",
  "owner": "Dana O'Neil <dana@example.com>",
  "event_list": [{"table_name": "client_txn",
    "rule": {"comparisons": [{"full_table_id": "analytics:prod.client_txn", "threshold": "49.0"}]}}]}}''',
    ),
    (
        "floats",
        SECRET,
        r'''{"a": 49.0, "b": 0.1, "c": 1e-05, "d": 1e16, "e": 3.14159,
 "f": [49.0, 0.1, 1e-05, 1E16, 3.14159, 0.00001, 10000000000000000.0, 1e15, -0.0, 2.5e-7,
       1.7976931348623157e308, 5e-324, 0.30000000000000004, 1e400, 123456789.123456789],
 "g": {"x": 0.0001, "y": -1.5E+3}}''',
    ),
    (
        "ints",
        SECRET,
        r'''{"small": 0, "neg": -42, "negzero": -0,
 "big": 123456789012345678901234567890, "list": [1, -0, 100, 9007199254740993]}''',
    ),
    (
        "spaces_quotes_backslashes",
        SECRET,
        r'''{"top": "a b 'c' \"d\" \\ e/f?g=h&i+j%k",
 "nested": {"s": "it's", "d": "say \"hi\"", "both": "' and \"", "bs": "back\\slash",
   "ctl": "tab\there\nnew\rcr\u0000\u001f\u007f\b\f", "sp": "  two  spaces  "},
 "key with spaces": ["x y", "a'b", "a\"b"]}''',
    ),
    (
        "non_ascii",
        SECRET,
        r'''{"name": "café", "jp": "日本", "emoji": "🚀 launch",
 "nested": ["é", "日本", "😀", "\ud83d\ude00", "\u00e9", "\u00a0", "\u00ad", "\u200b",
            "\u2028", "\ue000", "\u0085", "\u3000", "\ufeff", "\udb80\udc00"],
 "clé": {"ключ": "значение", "emoji 🚀": "ok"}}''',
    ),
    (
        "empty_null_bool",
        SECRET,
        r'''{"e1": [], "e2": {}, "n": null, "t": true, "f": false,
 "deep": {"l": [[], {}, [null, true, false]], "d": {"a": {"b": {"c": {}}}}}}''',
    ),
    (
        "key_order_not_sorted",
        SECRET,
        r'''{"zeta": 1, "alpha": {"zz": 1, "aa": 2, "mm": [3, 2, 1]}, "mid": "x", "Alpha": 0}''',
    ),
    (
        "duplicate_keys",
        SECRET,
        r'''{"a": 1, "b": {"k": 1, "j": 0, "k": 2}, "a": 3}''',
    ),
    (
        "pretty_printed",
        SECRET,
        '{\n\t"account" :\t{ "id" : "x" } ,\r\n  "list" : [ 1 , 2.0 , "3" ]\n}\n',
    ),
    (
        "non_ascii_secret",
        "sécret-🔑 with space",
        r'''{"account": {"id": "a"}, "action": "incident"}''',
    ),
    (
        "nested_lone_surrogate",
        SECRET,
        r'''{"a": ["\ud800", "x\udc00y"], "b": {"\ud800": 1}}''',
    ),
    (
        "python_constants",
        SECRET,
        r'''{"x": NaN, "y": [Infinity, -Infinity]}''',
    ),
    ("empty_object", SECRET, "{}"),
    ("solidus_and_escapes", SECRET, r'''{"u": "a\/b", "n": ["a\/b", "\u0041\u00DF"]}'''),
    # The reference code raises on these, so no delivery with such a body is genuine.
    ("top_level_lone_surrogate", SECRET, r'''{"a": "\ud800"}'''),
    ("top_level_list", SECRET, "[1, 2]"),
    ("not_json", SECRET, "account=1"),
    ("trailing_comma", SECRET, '{"a": 1,}'),
]


def reference(secret, body):
    """(signed text, signature), or (None, None) where the reference verifier raises."""
    try:
        content = urlencode(json.loads(body)).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError):
        return None, None
    signature = hmac.new(secret.encode("utf-8"), content, hashlib.sha512).hexdigest()
    return content.decode("utf-8"), signature


def main():
    vectors = []
    for name, secret, body in CASES:
        canonical, signature = reference(secret, body)
        vectors.append(
            {
                "name": name,
                "secret": secret,
                "payload": body,
                "canonical": canonical,
                "signature": signature,
            }
        )
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "vectors.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"python": sys.version.split()[0], "vectors": vectors},
            f,
            indent=2,
            ensure_ascii=False,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
