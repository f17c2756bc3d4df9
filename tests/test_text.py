from imdbsent import text


def test_normaliser_drops_br_tags_lowercases_and_splits_punctuation():
    tok = text.fit_tokenizer(["Great film!<br /><br />Loved it."], max_vocab=100)
    assert text.tokens(tok, "Great film!<br />Loved it.") == ["great", "film", "!", "loved", "it", "."]


def test_vocabulary_is_capped_to_the_most_frequent_words_plus_pad_and_unk():
    corpus = ["a a a a b b b c c d"]
    tok = text.fit_tokenizer(corpus, max_vocab=2)
    vocab = tok.get_vocab()
    assert vocab[text.PAD] == text.PAD_ID == 0 and vocab[text.UNK] == text.UNK_ID == 1
    assert set(vocab) == {text.PAD, text.UNK, "a", "b"}
    assert text.encode(tok, ["a c zzz"]) == [[vocab["a"], text.UNK_ID, text.UNK_ID]]


def test_encode_gives_the_ids_of_the_full_tokenizer_pipeline():
    texts = ["Ｆｕｌｌ-width ＣＡＰＳ<br/>and ﬁ ligatures", "Ça c'est génial!!! 10/10 ★★★",
             "", "   ", "naïve café — «déjà vu» ... ok?", "日本語 テキスト 123abc_def"]
    tok = text.fit_tokenizer(texts, max_vocab=100)
    assert text.encode(tok, texts) == [tok.encode(t, add_special_tokens=False).ids for t in texts]
    assert text.UNK_ID not in text.encode(tok, texts)[0]  # NFKC applied alike when fitting


def test_encode_takes_the_texts_a_chunk_at_a_time_in_order(monkeypatch):
    tok = text.fit_tokenizer(["a b c d"], max_vocab=10)
    texts = ["a", "b b", "", "c d", "\ud800 d", "a"]  # a lone surrogate in the 2nd chunk
    whole = text.encode(tok, texts)
    calls = []
    chunked = text._encode_chunk
    monkeypatch.setattr(text, "ENCODE_CHUNK", 4)
    monkeypatch.setattr(text, "_encode_chunk", lambda t, chunk: calls.append(chunk) or chunked(t, chunk))
    assert text.encode(tok, iter(texts)) == whole and len(calls) == 2
    assert whole[4] == [text.UNK_ID, tok.token_to_id("d")]


def test_min_freq_drops_rare_words():
    tok = text.fit_tokenizer(["a a b"], max_vocab=100, min_freq=2)
    assert "a" in tok.get_vocab() and "b" not in tok.get_vocab()


def test_overlong_text_is_cut_before_tokenizing():
    tok = text.fit_tokenizer(["word"], max_vocab=10)
    ids = text.encode(tok, ["word " * (text.MAX_CHARS // 2)])[0]
    assert len(ids) == text.MAX_CHARS // 5


def test_iter_batches_groups_a_stream_without_losing_items():
    items = [str(i) for i in range(7)]
    assert list(text.iter_batches(iter(items), 3)) == [items[0:3], items[3:6], items[6:]]


def test_iter_batches_closes_a_batch_once_it_holds_max_chars():
    items = ["a" * 5, "b", "c" * 9, "d", "e", "f"]
    assert list(text.iter_batches(iter(items), 4, max_chars=6)) == [
        ["a" * 5, "b"], ["c" * 9], ["d", "e", "f"]]


def test_iter_batches_lets_a_pause_close_a_batch_early():
    items = ["a", "b", None, None, "c", "d", "e", None]
    assert list(text.iter_batches(iter(items), 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(text.iter_batches(iter(["a", None, "b"]), 3)) == [["a"], ["b"]]


def test_tokenizer_round_trips_through_its_json(tmp_path):
    tok = text.fit_tokenizer(["good bad ugly"], max_vocab=10)
    text.save(tok, tmp_path / "t.json")
    again = text.load(tmp_path / "t.json")
    assert again.get_vocab() == tok.get_vocab()
    assert text.encode(again, ["Good, BAD"]) == text.encode(tok, ["Good, BAD"])
