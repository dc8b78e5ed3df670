"""Write llama.cpp's token ids for a fixed corpus: the golden files of tests/test_tokenizer.py.

Run it with a Python that has llama-cpp-python (and so llama.cpp) installed, naming each model file:

    PYTHON_WITH_LLAMA_CPP scripts/gen_tokenizer_golden.py \
        --model smollm2=MODELS/SmolLM2-135M-Instruct.Q4_1.gguf --model gemma3=MODELS/gemma-3-270m-q4_k_m.gguf \
        [--out-dir tests/data]

(`forwardpass pull NAME` downloads a model; `forwardpass list` shows where the cached files are.)

For each model it writes tests/data/tokenizer_golden_<name>.json holding the corpus, the ids for the three
(add_bos, special) combinations (F,F), (T,F), (T,T), llama.cpp's detokenized bytes, the end-of-generation ids,
the non-normal token attributes and a digest of every token's piece. The corpus lives here so that the output
is deterministic; regenerate after changing it.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import random
from pathlib import Path

import llama_cpp

COMBOS = {"FF": (False, False), "TF": (True, False), "TT": (True, True)}

HANDWRITTEN = [
    "",
    " ",
    "Hello world",
    "Hello, world!",
    "hello world",
    " Hello world",
    "Hello world ",
    "  Hello  world  ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say we've done what you'd expect, isn't it? It's John's.",
    "I'M SURE THEY'LL SAY WE'VE DONE IT'S 'S 'T 'RE",
    "' ' 'hello' \"quoted\" `backticks`",
    "Hello ? World ! Yes . No , maybe ' s",
    "café naïve résumé Zürich Ångström façade jalapeño",
    "e\u0301 a\u0308 n\u0303 combining marks",
    "Größenwahn Straße ÄÖÜ äöü ß",
    "Ça va? Où est la bibliothèque? Très bien!",
    "¿Dónde está el baño? ¡Olé!",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "你好，世界！今天天气很好。",
    "我爱自然语言处理",
    "日本語のテキストです。ひらがなとカタカナ。",
    "한국어 텍스트입니다. 안녕하세요!",
    "مرحبا بالعالم! كيف حالك؟",
    "שלום עולם",
    "नमस्ते दुनिया! आप कैसे हैं?",
    "हिन्दी में क्षत्रिय और ज्ञान",
    "สวัสดีชาวโลก",
    "Xin chào thế giới! Tiếng Việt có dấu.",
    "Türkçe: İstanbul, ığdır, şeker, çay",
    "👍",
    "👍🏽",
    "👍👍👍",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 rainbow flag",
    "🇫🇷🇩🇪🇯🇵 flags",
    "1️⃣ 2️⃣ keycaps",
    "👩🏿‍💻 developer, 🧑🏻‍🚀 astronaut",
    "I ❤️ emoji 😀😃😄😁😆",
    "🫨 shaking face (Unicode 15)",
    "𑼀𑼁 Kawi (Unicode 15)",
    "\U0002ebf0 CJK Extension I (Unicode 15.1)",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝒜𝐁",
    "½ ¼ ² ³ Ⅻ ① ٣٤٥ ১২৩ 一二三",
    "0",
    "42",
    "123",
    "1234",
    "1234567890",
    "12345678901234567890123456789",
    "3.14159265358979",
    "1,000,000.00",
    "-42 +17 1e-10 0x1F 0b1010",
    "2024-01-15T10:30:00Z",
    "Call 555-123-4567 or +1 (800) 555-0199",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    '{"name": "forwardpass", "version": "0.1.0", "tags": ["llm", "gguf"], "n": 3}',
    '<html><body><div class="x">Hi</div></body></html>',
    "<table><tr><td>1</td><td>2</td></tr></table>",
    "<h1>Title</h1><p>Para <b>bold</b> <i>it</i> <code>x=1</code></p>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "import numpy as np\nx = np.arange(10)[::-1]  # reversed\nprint(x @ x.T)",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
    'fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!("{:?}", v); }',
    "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.com",
    "$ ls -la | grep '.py' > out.txt && echo done",
    "a\tb\tc",
    "\t\tindented",
    "\t",
    "\n",
    "\n\n",
    "\n\n\n",
    "\r\n",
    "line1\r\nline2\r\n",
    "a\nb\n\nc\n\n\nd",
    " \n ",
    "  \n  \n",
    "a  b",
    "a   b",
    "a    b",
    " " * 10,
    " " * 40,
    "x" + " " * 33 + "y",
    "\n" * 35,
    "\t" * 40,
    "word\n" * 5,
    "   leading spaces",
    "trailing spaces   ",
    "\u00a0non\u00a0breaking\u00a0space",
    "ideographic\u3000space",
    "line\u2028separator\u2029para",
    "next\u0085line",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "\ufeffBOM at start",
    "private \ue000\uf8ff use",
    "control \x00 \x01 \x1b[31mred\x1b[0m \x7f",
    "soft\u00adhyphen",
    "▁ lower one eighth block ▁▁",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_start",
    "<|im_start|",
    "im_start|>",
    "<|im_end|>\n",
    " <|im_end|> ",
    "<repo_name>forwardpass<file_sep>main.py<reponame>x",
    "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<bos>Hello<eos>",
    "<s>",
    "</s>",
    "<s>Hello</s>",
    "<unk>",
    "<pad>",
    "<mask>",
    "[multimodal]",
    "<unused0><unused1>",
    "<start_of_image><end_of_image>",
    "<0x41> literal byte token text",
    "<|eot_id|><|start_header_id|>user<|end_header_id|>",
    "[INST] Hello [/INST]",
    "Repeated words words words words words",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!!!!?????....,,,,;;;;::::",
    "----====____****####",
    "ThisIsCamelCaseAndSnake_case_and-kebab-case",
    "HTTPServerError XMLHttpRequest iPhone eBay",
    "Mr. Smith's dog, Rex, barked. \"Stop!\" said Mrs. O'Brien.",
    "Temperature: 25°C (77°F) ± 0.5°; price: €12.50, £10, ¥1000, ₹500",
    "Math: ∑ᵢ xᵢ² ≤ ∞, ∀x ∈ ℝ: x ≥ 0 ⇒ √x ∈ ℝ",
    "Arrows → ← ↑ ↓ ⟶ and box ┌─┐│└─┘",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "ｶﾀｶﾅ halfwidth",
    "Mixed 中文 and English 和 日本語 with 한국어 and emoji 🎉!",
    "The year 1999 and 2000, 3 apples, 44 pears, 555 plums, 6666 kiwis.",
]

PARAGRAPH = (
    "Large language models generate text one token at a time. Each step reads the whole prompt through the "
    "attention cache, picks the next token, and appends it. Inference engines batch many requests together, "
    "page the key/value cache in fixed-size blocks, and stream the text back as it is produced.\n\n"
)

CHAT_TEXTS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"
    "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time.<|im_end|>\n",
    "<start_of_turn>user\nTranslate to French: good morning<end_of_turn>\n<start_of_turn>model\nBonjour<end_of_turn>\n",
    "<bos><start_of_turn>user\nCount: 1 2 3<end_of_turn>\n<start_of_turn>model\n4 5 6<end_of_turn>\n",
]

ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list("     \t\n\n\r.,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`")
    + list("éèüößñçÅØæœ")
    + list("中文日本語한국어ไทยالعربيةहिन्दीРусский")
    + ["👍", "🏽", "\u200d", "👩", "🎉", "❤", "\ufe0f", "▁", "\u00a0", "\u3000"]
    + ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "</s>", "<td>", "  ", "\n\n"]
)


def build_corpus() -> list[str]:
    """The fixed corpus: hand-written cases, long texts, and seeded random mixtures."""
    corpus = list(HANDWRITTEN) + list(CHAT_TEXTS)
    corpus.append(PARAGRAPH * 3)
    corpus.append("".join(HANDWRITTEN[20:40]))
    rng = random.Random(20240611)
    for _ in range(100):
        n = rng.randint(1, 40)
        corpus.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    for _ in range(20):  # digit runs of every length, with separators
        corpus.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 15))) for _ in range(rng.randint(1, 5))))
    seen: set[str] = set()
    return [t for t in corpus if not (t in seen or seen.add(t))]


def detokenize(vocab: object, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    """llama.cpp's llama_detokenize (not llama-cpp-python's per-piece detokenize)."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def piece(vocab: object, token: int, special: bool) -> bytes:
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def pieces_digest(vocab: object, n_vocab: int, special: bool) -> str:
    """sha256 over every token's piece, each prefixed by its length: one figure to compare them all."""
    h = hashlib.sha256()
    for t in range(n_vocab):
        p = piece(vocab, t, special)
        h.update(len(p).to_bytes(4, "little") + p)
    return h.hexdigest()


def golden_for(path: Path, corpus: list[str]) -> dict:
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cases = []
    for text in corpus:
        ids = {k: llm.tokenize(text.encode("utf-8"), add_bos=b, special=s) for k, (b, s) in COMBOS.items()}
        cases.append(
            {
                "text": text,
                "ids": ids,
                "detok_hex": {
                    "FF": detokenize(vocab, ids["FF"], False, True).hex(),
                    "TT": detokenize(vocab, ids["TT"], False, True).hex(),
                    "TT_skip": detokenize(vocab, ids["TT"], False, False).hex(),
                },
            }
        )
    attrs = {t: int(llama_cpp.llama_vocab_get_attr(vocab, t)) for t in range(n_vocab)}
    return {
        "gguf": path.name,
        "llama_cpp_python": llama_cpp.__version__,
        "n_vocab": n_vocab,
        "bos_id": int(llama_cpp.llama_vocab_bos(vocab)),
        "eos_id": int(llama_cpp.llama_vocab_eos(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "non_normal_attrs": {str(t): a for t, a in attrs.items() if a != 4},  # 4: LLAMA_TOKEN_ATTR_NORMAL
        "pieces_sha256": {
            "special": pieces_digest(vocab, n_vocab, True),
            "plain": pieces_digest(vocab, n_vocab, False),
        },
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH.gguf (repeatable)")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent.parent / "tests" / "data"))
    args = parser.parse_args()
    models = [spec.partition("=")[::2] for spec in args.model]
    for spec, (name, path) in zip(args.model, models):
        if not name or not path:
            parser.error(f"--model {spec!r}: expected NAME=PATH.gguf")
        if not Path(path).is_file():
            parser.error(f"--model {spec!r}: no such file {path}")
    corpus = build_corpus()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in models:
        golden = golden_for(Path(path), corpus)
        out = out_dir / f"tokenizer_golden_{name}.json"
        out.write_text(json.dumps(golden, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        print(f"{out}: {len(golden['cases'])} strings x {len(COMBOS)} combos")


if __name__ == "__main__":
    main()
