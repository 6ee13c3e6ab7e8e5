import random

import pytest

from bridge.text import (
    ALLOWED_EXTRA,
    POSTSALE_DEFAULT_LIMIT,
    QUESTION_ANSWER_LIMIT,
    describe_chars,
    local_time,
    markdown_to_plain,
    normalize_latin1,
    split_message,
)

SENTENCES = [
    "Olá, João! Obrigado pela compra.",
    "O pedido já foi separado no estoque.",
    "A nota fiscal segue em anexo.",
    "Enviamos pelos Correios hoje à tarde.",
    "O código de rastreio chega por e-mail.",
    "Qualquer dúvida, estamos à disposição.",
    "A garantia é de noventa dias.",
    "Você pode trocar o tamanho sem custo?",
    "Sim, basta nos avisar por aqui.",
    "Ação rápida não é problema para nós.",
]


def sentence_text(min_length: int) -> str:
    words: list[str] = []
    index = 0
    while len(" ".join(words)) < min_length:
        words.append(SENTENCES[index % len(SENTENCES)])
        index += 1
    return " ".join(words)


def normalised_words(text: str) -> list[str]:
    return text.split()


# --------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------


def test_it_exposes_the_mercado_livre_limits():
    assert QUESTION_ANSWER_LIMIT == 2000
    assert POSTSALE_DEFAULT_LIMIT == 350


def test_it_allows_no_extra_characters_beyond_latin1():
    assert ALLOWED_EXTRA == frozenset()


# --------------------------------------------------------------------------
# markdown_to_plain
# --------------------------------------------------------------------------


def test_it_returns_empty_text_for_none_or_empty_markdown():
    assert markdown_to_plain(None) == ""
    assert markdown_to_plain("") == ""
    assert markdown_to_plain("   \n\n  ") == ""


def test_it_strips_bold_with_asterisks_and_underscores():
    assert markdown_to_plain("Seu pedido **foi enviado** hoje") == "Seu pedido foi enviado hoje"
    assert markdown_to_plain("Seu pedido __foi enviado__ hoje") == "Seu pedido foi enviado hoje"


def test_it_strips_italic_with_asterisks_and_underscores():
    assert markdown_to_plain("Prazo *estimado* de _cinco_ dias") == "Prazo estimado de cinco dias"


def test_it_strips_nested_and_combined_emphasis():
    assert markdown_to_plain("***Atenção***: **muito *importante* mesmo**") == ("Atenção: muito importante mesmo")
    assert markdown_to_plain("_**sim**_ e **_não_**") == "sim e não"


def test_it_strips_strikethrough():
    assert markdown_to_plain("Preço ~~R$ 100~~ R$ 80") == "Preço R$ 100 R$ 80"


def test_it_keeps_a_single_tilde_meaning_approximately():
    assert markdown_to_plain("Chega em ~3 dias") == "Chega em ~3 dias"


def test_it_leaves_snake_case_words_untouched():
    text = "Use o campo order_id_value e o arquivo nota_fiscal_final.pdf"
    assert markdown_to_plain(text) == text


def test_it_leaves_lone_asterisks_in_arithmetic_untouched():
    assert markdown_to_plain("5 * 3 = 15 e 2 * 4 = 8") == "5 * 3 = 15 e 2 * 4 = 8"
    assert markdown_to_plain("Caixa 2*3*4 cm") == "Caixa 2*3*4 cm"


def test_it_honours_backslash_escapes():
    assert markdown_to_plain(r"Use \*asteriscos\* e snake\_case") == "Use *asteriscos* e snake_case"


def test_it_strips_inline_code_but_keeps_its_text():
    assert markdown_to_plain("Digite `cupom_DESCONTO **10**` no carrinho") == (
        "Digite cupom_DESCONTO **10** no carrinho"
    )


def test_it_keeps_the_code_of_fenced_blocks_verbatim():
    md = "Configure assim:\n\n```python\nvalor = preco * 2\n**não é negrito**\n```\n\nPronto."
    assert markdown_to_plain(md) == ("Configure assim:\n\nvalor = preco * 2\n**não é negrito**\n\nPronto.")


def test_it_keeps_the_code_of_tilde_fences_and_unclosed_fences():
    assert markdown_to_plain("~~~\na_b_c\n~~~") == "a_b_c"
    assert markdown_to_plain("```\n# não é título") == "# não é título"


def test_it_strips_heading_markers():
    assert markdown_to_plain("# Rastreio\n## Prazo **curto** ##\nTexto") == "Rastreio\nPrazo curto\nTexto"


def test_it_does_not_treat_hashtags_as_headings():
    assert markdown_to_plain("#1 mais vendido") == "#1 mais vendido"


def test_it_strips_blockquote_markers():
    assert markdown_to_plain("> Você perguntou:\n> > qual a cor?\nResposta: azul") == (
        "Você perguntou:\nqual a cor?\nResposta: azul"
    )


def test_it_renders_links_as_text_followed_by_url():
    assert markdown_to_plain("Veja [nossa loja](https://loja.example/perfil_ofc) agora") == (
        "Veja nossa loja (https://loja.example/perfil_ofc) agora"
    )


def test_it_renders_a_link_whose_text_is_its_url_once():
    assert markdown_to_plain("[https://loja.example](https://loja.example)") == "https://loja.example"
    assert markdown_to_plain("[loja.example](https://loja.example/)") == "https://loja.example/"


def test_it_strips_emphasis_inside_link_text():
    assert markdown_to_plain("[**manual**](https://x.example/m.pdf)") == "manual (https://x.example/m.pdf)"


def test_it_renders_images_as_their_url():
    assert markdown_to_plain("Foto: ![caixa](https://cdn.example/caixa_1.png)") == (
        "Foto: https://cdn.example/caixa_1.png"
    )


def test_it_does_not_break_bare_or_angle_bracket_urls():
    assert markdown_to_plain("Acesse https://x.example/_promo_/ hoje.") == ("Acesse https://x.example/_promo_/ hoje.")
    assert markdown_to_plain("Acesse <https://x.example/a_b_>") == "Acesse https://x.example/a_b_"
    assert markdown_to_plain("**https://x.example/a**") == "https://x.example/a"


def test_it_normalises_bullet_lists_to_dashes():
    md = "Itens:\n- capa\n* película\n+ cabo\n  * carregador"
    assert markdown_to_plain(md) == "Itens:\n- capa\n- película\n- cabo\n  - carregador"


def test_it_strips_emphasis_inside_list_items():
    assert markdown_to_plain("* **Cor**: azul") == "- Cor: azul"


def test_it_keeps_numbered_lists():
    md = "Passos:\n1. Abra o app\n2. Toque em **Compras**\n3) Confirme"
    assert markdown_to_plain(md) == "Passos:\n1. Abra o app\n2. Toque em Compras\n3) Confirme"


def test_it_drops_horizontal_rules():
    assert markdown_to_plain("Acima\n\n---\n\nAbaixo") == "Acima\n\nAbaixo"


def test_it_unescapes_html_entities():
    md = "Tom &amp; Cia &lt;oficial&gt; &quot;top&quot; d&#39;água a&nbsp;b"
    assert markdown_to_plain(md) == 'Tom & Cia <oficial> "top" d\'água a b'


def test_it_unescapes_entities_only_once():
    assert markdown_to_plain("&amp;lt;") == "&lt;"


def test_it_turns_hard_breaks_into_line_breaks():
    assert markdown_to_plain("linha um  \nlinha dois\\\nlinha três") == "linha um\nlinha dois\nlinha três"
    assert markdown_to_plain("um<br>dois<br />três") == "um\ndois\ntrês"


def test_it_collapses_blank_lines_and_trailing_spaces():
    md = "  \n\nOlá   \n\n\n\n\nTchau  \t\n\n"
    assert markdown_to_plain(md) == "Olá\n\nTchau"


def test_it_accepts_windows_line_endings():
    assert markdown_to_plain("**a**\r\n\r\n\r\n\r\nb\r") == "a\n\nb"


def test_it_drops_link_titles():
    assert markdown_to_plain('[manual](https://x.example/m.pdf "Manual do produto")') == (
        "manual (https://x.example/m.pdf)"
    )


def test_it_keeps_balanced_parentheses_in_link_urls():
    md = "[wiki](https://pt.wikipedia.org/wiki/Caf%C3%A9_(bebida))"
    assert markdown_to_plain(md) == "wiki (https://pt.wikipedia.org/wiki/Caf%C3%A9_(bebida))"


def test_it_drops_the_closing_sequence_of_headings_only():
    assert markdown_to_plain("# Curso de C# ##") == "Curso de C#"
    assert markdown_to_plain("## Tag#") == "Tag#"


def test_it_keeps_the_code_of_fences_inside_blockquotes():
    assert markdown_to_plain("> ```\n> a_b_ * 2\n> ```\n> **ok**") == "a_b_ * 2\nok"


def test_it_is_not_confused_by_private_use_characters_in_the_input():
    text = "\U000f0000 \U00100000 **a** `b`"
    assert markdown_to_plain(text) == "\U000f0000 \U00100000 a b"


# A hang guard, not a speed goal: the quadratic versions took 34 s to minutes.
@pytest.mark.timeout(60)
def test_it_never_hangs_on_long_lines_of_unmatched_delimiters():
    for md in ("*a " * 30000, "_a " * 30000, "~~a " * 30000, "[a](x" * 30000, "`` a ` " * 20000, "# " + " " * 90000):
        markdown_to_plain(md)


# A hang guard, not a speed goal: the quadratic versions took 34 s to minutes.
@pytest.mark.timeout(60)
def test_it_never_hangs_on_long_runs_of_nested_emphasis():
    for md in ("*" * 30000 + "a" + "*" * 30000, "**a" * 30000, "[*a](x)" * 10000, "www.a_" * 20000):
        markdown_to_plain(md)


def test_it_keeps_bare_urls_as_typed_even_without_a_scheme():
    assert markdown_to_plain("Veja www.loja.com.br/_promo_ e loja.com.br") == (
        "Veja www.loja.com.br/_promo_ e loja.com.br"
    )


def test_it_shows_email_autolinks_without_brackets():
    assert markdown_to_plain("Escreva para <vendas@loja.example>") == "Escreva para vendas@loja.example"


def test_it_shows_non_ascii_link_urls_as_typed_not_percent_encoded():
    assert markdown_to_plain("[foto](https://x.example/café.png)") == "foto (https://x.example/café.png)"


def test_it_keeps_a_link_with_an_unsafe_scheme_as_typed():
    assert markdown_to_plain("[clique](javascript:alert(1))") == "[clique](javascript:alert(1))"


def test_it_shows_html_tags_other_than_line_breaks_as_typed():
    assert markdown_to_plain("Use <b>sempre</b> o cupom") == "Use <b>sempre</b> o cupom"
    assert markdown_to_plain("<div>\noi\n</div>\nfim") == "<div>\noi\n</div>\nfim"


def test_it_strips_the_underline_of_setext_headings():
    assert markdown_to_plain("Prazo\n===\nCinco dias") == "Prazo\nCinco dias"


def test_it_keeps_empty_list_items_and_code_inside_items():
    assert markdown_to_plain("- a\n-\n- b") == "- a\n-\n- b"
    assert markdown_to_plain("1. Digite:\n   ```\n   x_y *z*\n   ```\n2. Pronto") == (
        "1. Digite:\nx_y *z*\n2. Pronto"
    )


def test_it_leaves_emphasis_touching_a_word_as_typed():
    assert markdown_to_plain("foo*bar* e **a**b mas *c*") == "foo*bar* e **a**b mas c"


def test_it_leaves_plain_portuguese_text_untouched():
    text = "Olá, João! Ação não é problema. Frete grátis até sexta-feira (R$ 0,00)."
    assert markdown_to_plain(text) == text


# --------------------------------------------------------------------------
# normalize_latin1
# --------------------------------------------------------------------------


def test_it_keeps_portuguese_accents():
    text = "Olá, João! Ação não é problema"
    assert normalize_latin1(text) == (text, [])


def test_it_composes_decomposed_accents():
    assert normalize_latin1("Joa\u0303o, a\u0301gua, c\u0327") == ("João, água, ç", [])


def test_it_converts_curly_quotes_to_straight_quotes():
    converted, unsupported = normalize_latin1(
        "\u201cÓtimo\u201d, disse \u2018Ana\u2019 \u201ebaixo\u201d \u201asim\u201b"
    )
    assert converted == "\"Ótimo\", disse 'Ana' \"baixo\" 'sim'"
    assert unsupported == []


def test_it_converts_dashes_and_minus_to_hyphen():
    assert normalize_latin1("10\u201320 dias \u2014 ou \u22121") == (
        "10-20 dias - ou -1",
        [],
    )


def test_it_converts_ellipsis_and_bullets():
    assert normalize_latin1("Aguarde\u2026\n\u2022 item") == ("Aguarde...\n- item", [])


def test_it_converts_special_spaces_to_plain_spaces():
    text = "R$\u00a010 R$\u202f20 1\u20090 1\u20070"
    assert normalize_latin1(text) == ("R$ 10 R$ 20 1 0 1 0", [])


def test_it_removes_zero_width_characters():
    assert normalize_latin1("\ufeffpa\u200blavra\u200c\u200d") == ("palavra", [])


def test_it_reports_emoji_and_arrows_without_dropping_them():
    converted, unsupported = normalize_latin1("Enviado \U0001f600 \u2192 amanhã \U0001f600")
    assert converted == "Enviado \U0001f600 \u2192 amanhã \U0001f600"
    assert unsupported == ["\u2192", "\U0001f600"]


def test_it_reports_characters_sorted_and_distinct():
    _, unsupported = normalize_latin1("\u2713 \u20ac \u2713 \u4e2d")
    assert unsupported == sorted({"\u2713", "\u20ac", "\u4e2d"})


def test_it_keeps_latin1_symbols():
    text = "Preço: R$ 10,00 ± 5% · 2º lugar ª © ® ° ½ ¿¡"
    assert normalize_latin1(text) == (text, [])


# --------------------------------------------------------------------------
# describe_chars
# --------------------------------------------------------------------------


def test_it_describes_characters_with_their_code_points():
    assert describe_chars(["\U0001f600", "\u2192"]) == '"\U0001f600" (U+1F600), "\u2192" (U+2192)'


def test_it_describes_invisible_characters_by_name():
    assert describe_chars(["\u200e"]) == "U+200E (LEFT-TO-RIGHT MARK)"


def test_it_describes_an_empty_list_as_empty_text():
    assert describe_chars([]) == ""


def test_it_describes_what_normalize_latin1_reports():
    _, unsupported = normalize_latin1("ok \u2192 \U0001f44d")
    assert describe_chars(unsupported) == '"\u2192" (U+2192), "\U0001f44d" (U+1F44D)'


# --------------------------------------------------------------------------
# split_message
# --------------------------------------------------------------------------


def test_it_returns_short_text_as_a_single_part():
    assert split_message("Olá, João!") == ["Olá, João!"]


def test_it_returns_text_exactly_at_the_limit_as_one_part():
    text = ("abcd " * 70)[:349] + "!"
    assert len(text) == 350
    assert split_message(text, 350) == [text]


def test_it_returns_no_parts_for_blank_text():
    assert split_message("") == []
    assert split_message(" \n\n ") == []


def test_it_strips_the_text_before_measuring():
    assert split_message("   Olá   ", 5) == ["Olá"]


def test_it_uses_the_postsale_limit_by_default():
    parts = split_message(sentence_text(1000))
    assert all(len(p) <= POSTSALE_DEFAULT_LIMIT for p in parts)
    assert len(parts) > 1


def test_it_splits_900_chars_of_sentences_into_three_full_parts_in_order():
    text = sentence_text(880)
    assert 880 <= len(text) <= 950
    parts = split_message(text, 350)
    assert len(parts) == 3
    assert all(0 < len(p) <= 350 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())
    # each part ends at a sentence end
    assert all(p[-1] in ".!?" for p in parts)


def test_it_prefers_paragraph_breaks():
    first = "Primeiro parágrafo. " * 5
    second = "Segundo parágrafo com mais texto. " * 5
    text = first.strip() + "\n\n" + second.strip()
    parts = split_message(text, 200)
    assert parts[0] == first.strip()
    assert parts[1].startswith("Segundo")


def test_it_prefers_line_breaks_over_sentence_ends():
    text = "Linha um. Ainda linha um.\nLinha dois é longa. " + "palavra " * 10
    parts = split_message(text.strip(), 60)
    assert parts[0] == "Linha um. Ainda linha um."


def test_it_prefers_sentence_ends_over_spaces():
    text = "Frase curta aqui. Depois vem uma frase bem mais comprida que não cabe"
    parts = split_message(text, 40)
    assert parts[0] == "Frase curta aqui."


def test_it_splits_at_spaces_when_there_is_no_sentence_end():
    text = "palavra " * 20
    parts = split_message(text, 30)
    assert parts[0] == "palavra palavra palavra"
    assert all(len(p) <= 30 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_it_hard_cuts_only_a_word_longer_than_the_limit():
    word = "x" * 1000
    parts = split_message(word, 350)
    assert [len(p) for p in parts] == [350, 350, 300]
    assert "".join(parts) == word


def test_it_does_not_cut_short_words_around_a_long_word():
    long_word = "https://loja.example/" + "a" * 400
    text = f"Veja o link {long_word} obrigado"
    parts = split_message(text, 100)
    assert parts[0] == "Veja o link"
    assert all(len(p) <= 100 for p in parts)
    assert "".join(parts[1:-1]) + parts[-1].split()[0] == long_word
    assert parts[-1].endswith(" obrigado")


def test_it_keeps_line_breaks_inside_parts():
    text = "Itens:\n- capa\n- película\n\n" + "Obrigado pela compra. " * 20
    parts = split_message(text, 350)
    assert parts[0] == "Itens:\n- capa\n- película"


def test_it_counts_closing_quotes_as_part_of_a_sentence_end():
    text = 'Ele disse "chegou." Depois confirmou pelo aplicativo'
    assert split_message(text, 30)[0] == 'Ele disse "chegou."'


def test_it_never_splits_at_decimal_points():
    text = "Custa R$ 10.50 por unidade e o frete sai 3.20 hoje"
    parts = split_message(text, 20)
    assert all(len(p) <= 20 for p in parts)
    assert " ".join(parts).split() == text.split()
    assert "10.50" in " ".join(parts).split()


def test_it_handles_a_limit_of_one_character():
    assert split_message("ab c", 1) == ["a", "b", "c"]


def test_it_splits_deterministically():
    text = sentence_text(3000)
    assert split_message(text, 350) == split_message(text, 350)


def test_it_rejects_a_limit_below_one():
    with pytest.raises(ValueError):
        split_message("abc", 0)


def test_it_splits_question_answers_at_2000_chars():
    text = sentence_text(4500)
    parts = split_message(text, QUESTION_ANSWER_LIMIT)
    assert len(parts) == 3
    assert all(len(p) <= QUESTION_ANSWER_LIMIT for p in parts)


def random_text(rng: random.Random, max_word: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzáéíóúãõçÁÉÇ0123456789,;:-"
    chunks: list[str] = []
    for _ in range(rng.randint(0, 150)):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, max_word)))
        roll = rng.random()
        if roll < 0.1:
            word += rng.choice([".", "!", "?", '."', ".)"])
        chunks.append(word)
        roll = rng.random()
        if roll < 0.05:
            chunks.append("\n\n")
        elif roll < 0.1:
            chunks.append("\n")
        elif roll < 0.12:
            chunks.append("  \n \n\t")
        else:
            chunks.append(" ")
    return "".join(chunks)


@pytest.mark.parametrize("seed", range(4))
def test_it_preserves_words_in_order_for_random_texts(seed):
    rng = random.Random(seed)
    for _ in range(100):
        text = random_text(rng, max_word=12)
        limit = rng.choice([14, 20, 47, 100, 350])  # longest word: 12 letters + 2 punctuation
        parts = split_message(text, limit)
        assert all(0 < len(p) <= limit for p in parts)
        assert all(p == p.strip() for p in parts)
        assert " ".join(parts).split() == text.split()
        assert split_message(text, limit) == parts
        if len(text.strip()) <= limit:
            assert parts == ([text.strip()] if text.strip() else [])


@pytest.mark.parametrize("seed", range(2))
def test_it_preserves_characters_in_order_for_random_texts_with_long_words(seed):
    rng = random.Random(1000 + seed)
    for _ in range(100):
        text = random_text(rng, max_word=60)
        limit = rng.choice([10, 25, 50])
        parts = split_message(text, limit)
        assert all(0 < len(p) <= limit for p in parts)
        assert "".join("".join(parts).split()) == "".join(text.split())
        # words that fit the limit are never cut
        kept = " ".join(parts).split()
        for word in text.split():
            if len(word) <= limit:
                assert word in kept


def test_a_date_is_shown_to_agents_in_the_display_time_zone_never_utc():
    moment = 1795341600.0  # 2026-11-22T10:00:00Z
    assert local_time(moment, "America/Sao_Paulo") == "22/11/2026 07:00 (horário de Brasília)"
    assert local_time(moment, "America/Manaus") == "22/11/2026 06:00 (America/Manaus)"
    assert local_time(None, "America/Sao_Paulo") is None
