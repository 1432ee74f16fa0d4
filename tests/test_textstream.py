import pytest

from mlx_server.engine.textstream import IncrementalDetokenizer, StopMatcher

# A toy byte-level "tokenizer": each token is one UTF-8 byte.
TEXT = "héllo wörld — 日本語 ok"
BYTES = list(TEXT.encode())


def decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_never_splits_multibyte_characters():
    det = IncrementalDetokenizer(decode)
    deltas = [det.add(b) for b in BYTES]
    deltas.append(det.flush())
    assert "".join(deltas) == TEXT
    assert all("\ufffd" not in d for d in deltas)


def test_detokenizer_flush_releases_incomplete_tail():
    det = IncrementalDetokenizer(decode)
    out = "".join(det.add(b) for b in b"ab" + "日".encode()[:2])
    assert out == "ab"
    assert det.flush() == "\ufffd"


def run_stops(stops, pieces):
    m = StopMatcher(stops)
    out, stopped = [], False
    for p in pieces:
        text, stopped = m.feed(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(m.flush())
    return "".join(out), stopped, out


@pytest.mark.parametrize("size", range(1, 9))
def test_stop_found_across_any_split(size):
    text = "the answer is 42. END here"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    out, stopped, _ = run_stops(["END", "STOP"], pieces)
    assert stopped and out == "the answer is 42. "


@pytest.mark.parametrize("size", range(1, 9))
def test_partial_stop_is_released_when_it_diverges(size):
    text = "ENDLESS? no: EN D and E"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    out, stopped, _ = run_stops(["ENDX"], pieces)
    assert not stopped and out == text


def test_earliest_stop_wins_and_nothing_after_it_is_emitted():
    out, stopped, _ = run_stops(["b", "cd"], ["acdxb"])
    assert stopped and out == "a"


def test_no_stops_passes_through():
    out, stopped, _ = run_stops([], ["x", "y"])
    assert out == "xy" and not stopped
