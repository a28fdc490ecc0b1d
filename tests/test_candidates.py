"""What a cleaner candidate's election node holds, read back (pure: no server)."""

from __future__ import annotations

from zkpubsub._candidates import candidate_record, candidate_settings, read_candidate


def test_a_record_reads_back_with_its_options() -> None:
    data = candidate_record("c1", 30.0, result_ttl=60.0, notice_ttl=7.5)
    assert read_candidate(data) == ("c1", 30.0)
    assert candidate_settings(data) == {"grace": 30.0, "result_ttl": 60.0, "notice_ttl": 7.5}
    assert candidate_settings(candidate_record("c1", 5)) == {"grace": 5.0}


def test_an_older_candidates_node_names_its_client_alone() -> None:
    assert read_candidate(b"c-old") == ("c-old", None)
    assert candidate_settings(b"c-old") == {}
    assert read_candidate(b'{"client": "c2"}') == ("c2", None)


def test_junk_is_read_as_no_options() -> None:
    for junk in (b"\xff\xfe", b"[1, 2]", b'"text"', b"null"):
        assert candidate_settings(junk) == {}
    assert read_candidate(b'{"client": "c3", "grace": "soon", "notice_ttl": true}') == ("c3", None)
    assert candidate_settings(b'{"grace": "soon", "notice_ttl": true, "result_ttl": 2}') == {
        "result_ttl": 2.0
    }
