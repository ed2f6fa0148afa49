"""Write the reference data that Fletcher's parity tests compare against.

Every vector here is computed by sentence-transformers (PyTorch, CPU, float32,
two threads, batch size 1), so a test can check that Fletcher produces the
same embeddings for the same inputs.

Rerun (about 15 seconds on two cores; the output is deterministic, see --retrain-tokenizers):

    /tmp/peers/bin/python scripts/make_reference.py /work/shared/models/all-MiniLM-L6-v2 tests/data

Options: --corpus-dir DIR (default /work/shared/bench), where corpus-pypi-20k.jsonl
and corpus-pydoc-4k.jsonl are read from; --retrain-tokenizers, to train new tiny-model
tokenizers instead of reusing the ones in OUT_DIR/tiny (tokenizers' trainer breaks ties
in hash order, so a retrained vocabulary differs slightly from run to run, and with it
the tiny references; everything else is reproduced bit for bit).

What it writes under OUT_DIR (tests/data):

  parity_texts.jsonl          {"text"} per line: the test texts (see build_texts)
  minilm_reference.jsonl      {"text", "tokens", "input_ids", "embedding"} for every
                              text: the model's own pipeline (mean pooling + Normalize,
                              max_seq_length 256). "tokens" is the token count after
                              truncation, [CLS] and [SEP] included.
  minilm_pool_{mode}.jsonl    {"text", "embedding"} for the first 20 texts, pooling
                              mode cls, max, mean, mean_sqrt_len_tokens or lasttoken,
                              without Normalize (unnormalized).
  minilm_left_truncation.jsonl
                              {"text", "tokens", "input_ids", "embedding"} for the first
                              20 texts with tokenizer.truncation_side = "left"
                              (the model's own pooling and Normalize).
  tiny/<name>/                small random sentence-transformers models (see TINY_MODELS)
                              with a WordPiece tokenizer trained here, and
                              tiny/<name>/reference.jsonl ({"text", "tokens", "embedding"}
                              for the first 30 texts, computed in float32 from the stored,
                              possibly float16/bfloat16-rounded, weights).

The tiny model directories use the classic sentence-transformers layout
(modules.json, sentence_bert_config.json with max_seq_length, 1_Pooling/config.json
with pooling_mode_* booleans), as found in most published models.

Generated with torch 2.15.0, sentence-transformers 6.3.0, transformers 5.25.0 and
tokenizers 0.23.3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

try:  # sentence-transformers >= 5.x layout
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
except ImportError:  # older releases
    from sentence_transformers.models import Pooling, Transformer

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True, warn_only=True)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

MINILM_MAX_SEQ = 256
N_POOL = 20  # texts for the pooling-mode and left-truncation references
N_TINY = 30  # texts for each tiny model's reference
POOL_MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken"]
PYPI_LINES = [0, 5, 42, 89, 129, 154]  # line numbers (0-based) of corpus-pypi-20k.jsonl
PYDOC_LINES = [0, 25, 197, 305, 438]  # 438 is the longest docstring (3891 chars)

# ---------------------------------------------------------------------------
# Texts (all written for this file, except the corpus lines read at run time)
# ---------------------------------------------------------------------------

LONG_LIGHTHOUSE = (
    "The lighthouse on the northern point was built in 1871, when the shipping lane past the "
    "headland had already claimed more than a dozen vessels. For most of its working life it was "
    "kept by a single family, who passed the duty from parent to child for three generations. "
    "Every evening the keeper climbed the one hundred and twelve steps of the spiral staircase, "
    "trimmed the wick, polished the great glass lens, and wound the clockwork that turned it. "
    "On stormy nights nobody slept: the light had to be watched, the fog horn sounded every "
    "thirty seconds, and the logbook filled with notes about wind, visibility and passing ships.\n\n"
    "The family grew vegetables in a walled garden that kept out the salt spray, kept goats for "
    "milk, and rowed to the village once a fortnight for flour, lamp oil and letters. The children "
    "learned their lessons at the kitchen table from a teacher who visited twice a month, and they "
    "knew the signal flags long before they could read a newspaper. In winter the supply boat "
    "sometimes could not land for weeks, and the pantry shelves were counted carefully.\n\n"
    "When the light was finally automated in 1989, the last keeper handed over the keys, locked "
    "the logbooks in a cabinet, and moved to a small house in the village from which she could "
    "still see the beam sweep across the water each night. Today the tower is a museum. Visitors "
    "can climb the staircase, read the old entries about gales and shipwrecks, and stand in the "
    "lantern room where the lens, now turned by an electric motor, still throws its white flash "
    "every ten seconds across twenty nautical miles of sea. A small exhibition explains how the "
    "lens works: hundreds of prisms bend the light of a single lamp into one narrow, powerful beam."
)

LONG_BREAD = (
    "Making bread at home is mostly a matter of patience. Start with five hundred grams of strong "
    "flour, ten grams of salt, seven grams of dried yeast and about three hundred and fifty "
    "millilitres of lukewarm water. Mix everything into a shaggy dough, cover the bowl, and leave "
    "it alone for twenty minutes so that the flour can absorb the water; this rest makes the "
    "kneading much easier. Then knead for ten minutes, stretching the dough away from you with the "
    "heel of your hand, folding it back, and turning it a quarter turn each time. It is ready when "
    "it feels smooth and springs back slowly when you press it with a finger.\n\n"
    "Put the dough back in the bowl, cover it, and let it rise somewhere warm until it has roughly "
    "doubled in size, which usually takes between one and two hours depending on the temperature "
    "of your kitchen. Resist the temptation to hurry it: a slow rise gives a better flavour. Knock "
    "the air out gently, shape the dough into a tight ball or a loaf, and put it on a floured tray "
    "or in a tin. Let it prove again for forty-five minutes while the oven heats to two hundred and "
    "twenty degrees Celsius. A tray of boiling water on the bottom shelf of the oven creates steam, "
    "which helps the crust to become thin and crisp.\n\n"
    "Slash the top of the loaf with a sharp knife, slide it into the oven and bake for about thirty "
    "minutes, until it is deep golden brown and sounds hollow when you tap the bottom. Let it cool "
    "on a wire rack for at least an hour before cutting it, because the inside is still cooking and "
    "will turn gummy if sliced too early. Once you are comfortable with this basic recipe, try "
    "replacing a fifth of the flour with wholemeal or rye, adding seeds, olives or dried fruit, or "
    "leaving the dough in the refrigerator overnight for a slower, tangier fermentation. Keep notes "
    "on what you change, because small differences in flour, water and timing add up quickly."
)

LONG_TECHNICAL = (
    "Caching HTTP responses correctly requires understanding a handful of headers. The server "
    "sends Cache-Control: max-age=3600 to say that a response may be reused for an hour without "
    "asking again. After that, the client revalidates: it sends If-None-Match with the ETag it "
    "received earlier (for example W/\"5f3a-1b2c\"), or If-Modified-Since with the Last-Modified "
    "date, and the server answers 304 Not Modified with an empty body when nothing changed. "
    "Responses that depend on request headers must list them in Vary, e.g. Vary: Accept-Encoding, "
    "otherwise a cache may serve a gzip body to a client that cannot decode it.\n\n"
    "Private data needs Cache-Control: private so that shared proxies never store it, and "
    "no-store for anything that must not be written to disk at all. A common mistake is to use "
    "no-cache when no-store is meant: no-cache allows storing the response but forces "
    "revalidation before every reuse. Another is to give versioned static assets such as "
    "app.3f9c2e.js a short lifetime; because the file name changes whenever the content does, "
    "those files can safely be cached for a year with the immutable directive.\n\n"
    "In code, a minimal conditional GET looks like this: resp = session.get(url, headers={'If-None-"
    "Match': etag}); if resp.status_code == 304: body = cached_body; else: etag = resp.headers."
    "get('ETag'); body = resp.content. Measure before and after: with a warm cache, the number of "
    "bytes transferred should drop sharply while the number of requests stays roughly the same, "
    "since every revalidation still costs a round trip of 20-200 ms. Finally, remember that "
    "clocks drift, so prefer max-age over Expires, and log the Age header when debugging stale "
    "content served by an intermediate CDN node."
)

LONG_TRAVEL = (
    "Day one, Lyon. Nous sommes arrivés en fin d'après-midi; la ville était pleine de lumière et "
    "les terrasses au bord de la Saône débordaient de monde. Dinner was a bouchon with quenelles, "
    "a heavy red wine and a waiter who explained everything twice, once in French and once in very "
    "careful English.\n\nTag zwei, Basel. Der Zug war pünktlich, natürlich. Wir sind am Rhein "
    "entlang spaziert, haben im Fluss Leute schwimmen sehen, die sich mit wasserdichten Beuteln "
    "treiben ließen, und abends eine Suppe gegessen, die nach Kümmel und Kindheit schmeckte. The "
    "hotel room overlooked a tram stop, so the night was punctuated by bells.\n\nDía tres, "
    "Barcelona. El vuelo salió con retraso, pero llegamos a tiempo para ver la puesta de sol desde "
    "el parque. Comimos pan con tomate, croquetas y pimientos de Padrón (unos pican y otros no). "
    "Las calles del barrio antiguo son estrechas y frescas incluso en agosto.\n\nDia quatro, "
    "Lisboa. Subimos de elétrico até ao castelo e descemos a pé, perdidos entre azulejos e "
    "roupa a secar nas janelas. Pastéis de nata, obviously, three each.\n\nGiorno cinque, Roma. "
    "Caldo, rumore, motorini ovunque. Abbiamo bevuto l'acqua delle fontanelle e mangiato la "
    "cacio e pepe più buona del viaggio. The notebook ends here, half the pages still empty, with "
    "a list of trains we never took: Firenze 08:15, Napoli 11:40, Bari 16:05."
)

LONG_CHINESE = (
    "清晨六点，城市还没有完全醒来。街角的早餐店已经亮起了灯，老板把刚蒸好的包子一笼一笼地摆在门口，"
    "白色的热气在冷空气里慢慢散开。骑着自行车上班的年轻人停下来，买两个肉包和一杯豆浆，边走边吃。"
    "公园里，几位老人正在打太极拳，动作缓慢而有力，仿佛时间在他们身边也放慢了脚步。不远处，"
    "一个小女孩牵着妈妈的手，指着湖面上的野鸭子大声地笑。到了八点，地铁站里挤满了人，"
    "每个人都低着头看手机，耳机里播放着各自喜欢的音乐或者新闻。写字楼的电梯一趟接一趟地上上下下，"
    "咖啡机发出嗡嗡的声音。中午时分，附近的小饭馆坐满了客人，服务员端着热腾腾的面条和炒菜在桌子之间穿梭。"
    "下午的阳光透过窗户照进图书馆，学生们安静地翻着书页，偶尔有人小声讨论一道数学题。傍晚，"
    "夕阳把整条街染成了金黄色，下班的人们匆匆赶回家，菜市场里讨价还价的声音此起彼伏。夜深了，"
    "城市的灯光一盏一盏地熄灭，只剩下路灯默默地照着空荡荡的马路，等待新的一天再次开始。"
)

LONG_RUSSIAN = (
    "Осенью в нашем городе рано темнеет. К пяти часам вечера на улицах зажигаются фонари, а в "
    "окнах домов появляется тёплый жёлтый свет. Люди возвращаются с работы, заходят в булочную за "
    "свежим хлебом и в аптеку за лекарствами, обсуждают погоду и цены. Дети после школы играют во "
    "дворе, пока родители не позовут их ужинать. Дворник сгребает опавшие листья в большие кучи, "
    "и ветер тут же разносит их обратно по тротуару.\n\nПо выходным на центральной площади "
    "открывается ярмарка: продают мёд, варенье, вязаные носки, деревянные ложки и горячий чай из "
    "самовара. Музыканты играют на баяне, а пожилые пары танцуют прямо у фонтана. В библиотеке "
    "проходят встречи с местными писателями, которые читают свои рассказы о войне, о деревне, о "
    "первой любви. Зимой площадь заливают водой, и она превращается в каток, где до поздней ночи "
    "звучит музыка и смех. Жизнь здесь течёт неторопливо, и многие, кто уехал в столицу, "
    "признаются, что скучают именно по этой тишине и по запаху печного дыма морозным утром."
)

LONG_CODE = '''import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator


@dataclass
class Record:
    """One line of an input file."""

    key: str
    values: list[float] = field(default_factory=list)

    def mean(self) -> float:
        if not self.values:
            raise ValueError(f"record {self.key!r} has no values")
        return sum(self.values) / len(self.values)


def read_records(lines: Iterable[str]) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"line {number}: {err}") from err
        yield Record(key=obj["key"], values=[float(v) for v in obj.get("values", [])])


def summarize(records: Iterable[Record]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rec in records:
        out[rec.key] = round(rec.mean(), 6)
    return out


if __name__ == "__main__":
    import sys

    with open(sys.argv[1], encoding="utf-8") as fh:
        summary = summarize(read_records(fh))
    for key, value in sorted(summary.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{key:<20} {value:>12.6f}")
'''


def long_log_text() -> str:
    """Some 40 log lines: timestamps, levels, key=value pairs, paths and ids."""
    levels = ["INFO", "DEBUG", "WARN", "ERROR"]
    services = ["api-gateway", "auth", "billing", "search-indexer", "mailer"]
    lines = []
    for i in range(40):
        lines.append(
            f"2024-05-{1 + i % 28:02d}T{(7 * i) % 24:02d}:{(13 * i) % 60:02d}:{(29 * i) % 60:02d}.{(i * 137) % 1000:03d}Z "
            f"{levels[i % 4]:<5} {services[i % 5]} request_id=req-{i * 7919 % 100000:05d} "
            f"path=/v{1 + i % 3}/items/{i * 31} status={[200, 201, 404, 500, 302][i % 5]} "
            f"latency_ms={(i * 37) % 900 + 3}"
        )
    return "\n".join(lines)


def build_texts(corpus_dir: Path) -> list[str]:
    """The parity texts, in a fixed order.

    The first 20 (pooling-mode and left-truncation references) and the first 30
    (tiny models) mix short texts with long ones that MiniLM truncates at 256
    tokens: indices 1, 4, 7, 10, 13, 17, 21, 25 and 28 are long.
    """
    texts: list[str] = [
        # 0-19: a mix, six of them long
        "The quick brown fox jumps over the lazy dog.",
        LONG_LIGHTHOUSE,
        "Hello, world!",
        "Les enfants jouaient dans le jardin pendant que leurs parents préparaient le dîner.",
        LONG_BREAD,
        "机器学习是人工智能的一个分支。",
        "Family: 👨\u200d👩\u200d👧\u200d👦, thumbs up 👍🏽, waving 👋🏿, technologist 👩🏾\u200d💻!",
        LONG_TECHNICAL,
        "Die Straßenbahn fährt heute wegen Bauarbeiten nur bis zum Hauptbahnhof.",
        "Сегодня утром в Москве шёл снег, и дороги были очень скользкими.",
        LONG_TRAVEL,
        "a",
        "def add(a: int, b: int) -> int:\n    return a + b  # simple",
        LONG_CHINESE,
        "tabs\tand\nnewlines \u00a0 nbsp\u200bzero-width\u3000ideographic   spaces",
        "Order #4521: 3 items at $19.99 each = $59.97 (incl. 7.5% tax) on 2024-03-15.",
        "https://example.com/path/to/page?query=value&other=123#section",
        long_log_text(),
        "مرحبا بكم في مكتبتنا، نتمنى لكم قراءة ممتعة.",
        " ",
        # 20-29: more of the same kind, three long
        "Is this the right way to the train station?",
        LONG_RUSSIAN,
        "東京は日本の首都です。ひらがなとカタカナ、そして漢字を混ぜて書きます。",
        "안녕하세요, 만나서 반갑습니다. 한국어 자연어 처리는 어렵지만 재미있습니다.",
        "null\u0000byte, bell\u0007char, escape \u001b[31mred\u001b[0m, delete\u007fchar",
        LONG_CODE,
        "cafe\u0301 vs caf\u00e9, n\u0303 vs \u00f1, A\u030a vs \u00c5 vs \u212b",
        "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
        " ".join(["word"] * 300),
        "[CLS] literal special tokens [SEP] [MASK] [PAD] [UNK] in the text",
    ]

    english = [
        "Hi.",
        "Machine learning models convert text into dense vectors that capture meaning.",
        "She sold the old piano to a neighbour who had always admired it from across the street, "
        "and then, a little sadly, bought a violin.",
        "The committee will reconvene on Thursday afternoon after reviewing the revised budget "
        "proposal, which includes cuts to travel, a freeze on new hires, and a modest increase in "
        "spending on maintenance for the aging buildings on the north campus.",
        "WARNING: DO NOT OPERATE THIS MACHINE WITHOUT PROTECTIVE EYEWEAR!",
        "tHiS sEnTeNcE hAs MiXeD cAsE lEtTeRs",
        "Don't, won't, can't -- isn't it odd? (Yes!) [maybe] {not} <tag> \"quoted\" 'single' ...",
        "It\u2019s a state\u2011of\u2011the\u2011art, well\u2011known \u2018thing\u2019 \u2014 \u201creally\u201d\u2026",
        "Buffalo buffalo Buffalo buffalo buffalo buffalo Buffalo buffalo.",
        "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "contact: jane.doe+filter@example.co.uk, cc: ops@example.org",
        "# Title\n\n* item one\n* item two\n\n**bold** and _italic_ and `code`",
        '<div class="note"><p>Hello &amp; welcome &lt;friend&gt;</p></div>',
        '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
        "What time is it?",
        "The results were surprisingly good.",
        "ha" * 400,
    ]

    languages = [
        "Où est la bibliothèque ? Je voudrais emprunter un roman policier.",
        "Ärger über Übergrößen ist öfter äußerst unnötig.",
        "Donaudampfschifffahrtsgesellschaftskapitän",
        "¿Dónde está la estación de tren? ¡Necesito llegar antes de las ocho!",
        "El niño comió una manzana y luego se durmió bajo el árbol.",
        "A informação não está disponível no momento; tente novamente mais tarde.",
        "Perché la città è così affollata oggi?",
        "Ёжик в тумане искал свою лошадку.",
        "Я люблю читати книжки ввечері.",
        "Καλημέρα! Τι κάνεις σήμερα;",
        "العَرَبِيَّةُ لُغَةٌ جَمِيلَةٌ",
        "שלום עולם, מה שלומך היום?",
        "בְּרֵאשִׁית בָּרָא",
        "मुझे हिंदी में किताबें पढ़ना बहुत पसंद है।",
        "नमस्ते दुनिया",
        "আমি বাংলায় গান গাই।",
        "வணக்கம் உலகம்",
        "我們明天早上九點在圖書館見面。",
        "我用Python写了一个小工具，速度提升了3倍！",
        "ｶﾀｶﾅ と ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
        "今日はいい天気ですね🌸",
        "한국어",
        "สวัสดีครับ ยินดีต้อนรับสู่ประเทศไทย",
        "Tiếng Việt có rất nhiều dấu thanh: à, á, ả, ã, ạ.",
        "Hà Nội là thủ đô của Việt Nam.",
        "İstanbul'da ılık bir akşam; ışıklar yanıyor.",
        "Zażółć gęślą jaźń.",
        "Příliš žluťoučký kůň úpěl ďábelské ódy.",
        "გამარჯობა მსოფლიო",
        "Բարեւ աշխարհ",
        "ሰላም ለዓለም",
        "می\u200cخواهم فارسی یاد بگیرم.",
        "Привет world, 你好 мир, hello 世界!",
        "Æsir, Øresund, Åland, ﬁne ﬂour, GROẞE STRAẞE",
    ]

    emoji = [
        "I love pizza 🍕 and tacos 🌮!",
        "👨\u200d👩\u200d👧\u200d👦",
        "👍🏽 👋🏿 🙌🏻",
        "🇫🇷 🇯🇵 🇺🇸",
        "🏳\ufe0f\u200d🌈",
        "1\ufe0f\u20e3 #\ufe0f\u20e3",
        "😀😃😄😁😆😅😂🤣",
        ":-) ;) <3 ¯\\_(ツ)_/¯",
    ]

    whitespace = [
        "tab\tseparated\tvalues\there",
        "line one\nline two\r\nline three\rline four",
        "multiple     spaces   between    words",
        "   leading and trailing spaces   ",
        "non\u00a0breaking\u00a0space",
        "zero\u200bwidth\u200bspace",
        "ideographic\u3000space\u3000here",
        "\u2028line separator\u2029paragraph separator",
        "en\u2002space em\u2003space thin\u2009space narrow\u202fnbsp",
        "form\u000cfeed and vertical\u000btab",
        "\t\n \u00a0\u3000",
        "\ufeffbyte order mark at the start",
        "co\u00adoperate with soft hyphen",
        "zero\u200cwidth\u200djoiners",
    ]

    control = [
        "\u0000\u0007\u001b\u007f",
        "next\u0085line and\u009bcsi",
        "\ufffd replacement \ufffd characters",
        "\ue000 private use \uf8ff",
    ]

    combining = [
        "Z\u0351\u036ba\u0310l\u0352g\u0346o\u0357 text",
        "\u0301 starts with a combining mark",
        "\u1100\u1161\u11a8 vs \uac01",
        "o\u0328 e\u0307 a\u0308 i\u0302",
    ]

    code = [
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
        "SELECT name, COUNT(*) AS n FROM users WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY n DESC;",
        "cat access.log | grep -E 'HTTP/1\\.[01]\" 5[0-9]{2}' | awk '{print $1}' | sort | uniq -c",
        "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@example\\.com$",
        "std::vector<std::pair<int, std::string>> v{{1, \"one\"}, {2, \"two\"}};",
    ]

    urls = [
        "Visit http://www.example.org or ftp://files.example.net/pub/readme.txt for details.",
        "https://münchen.example/straße?q=ü&lang=de",
        "C:\\Users\\Admin\\Documents\\report_final_v2.docx and /usr/local/lib/python3.12/site-packages/",
    ]

    numbers = [
        "3.14159265358979323846264338327950288419716939937510",
        "The total was $1,234,567.89 (≈ €1.1M) on 2024-03-15 at 14:30:00 UTC.",
        "1e-12 0x1F 0b1010 -42 +7 1/3 ½ ¾ ² ³",
        "１２３４５ ٠١٢٣٤٥٦٧٨٩ ०१२३",
        "+1 (555) 012-3456",
        "IPv4 192.168.0.1 and IPv6 2001:db8::ff00:42:8329",
    ]

    single = [".", "é", "中", "😀", "Z", "##ing ##s"]

    texts += english + languages + emoji + whitespace + control + combining + code + urls
    texts += numbers + single
    texts += read_corpus_lines(corpus_dir / "corpus-pypi-20k.jsonl", PYPI_LINES)
    texts += read_corpus_lines(corpus_dir / "corpus-pydoc-4k.jsonl", PYDOC_LINES)
    return texts


def read_corpus_lines(path: Path, numbers: list[int]) -> list[str]:
    wanted = set(numbers)
    found: dict[int, str] = {}
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i in wanted:
                found[i] = json.loads(line)["text"]
            if len(found) == len(wanted):
                break
    return [found[i] for i in numbers]


# ---------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------

# Characters that JSON allows unescaped but that some line splitters (e.g.
# Python's str.splitlines) treat as line breaks, plus DEL for readability.
_ESCAPE_EXTRA = ["\u001c", "\u001d", "\u001e", "\u007f", "\u0085", "\u2028", "\u2029"]


def dumps_line(obj: dict) -> str:
    s = json.dumps(obj, ensure_ascii=False)
    for ch in _ESCAPE_EXTRA:
        s = s.replace(ch, "\\u%04x" % ord(ch))
    return s


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(dumps_line(row) + "\n")


def floats(vec: np.ndarray) -> list[float]:
    """float32 values as Python floats: json writes the exact value (round-trips in f32 and f64)."""
    return [float(x) for x in np.asarray(vec, dtype=np.float32)]


def encode(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        emb = model.encode(texts, batch_size=1, convert_to_numpy=True, show_progress_bar=False)
    assert emb.dtype == np.float32, emb.dtype
    return emb


def token_ids(model: SentenceTransformer, text: str) -> list[int]:
    """Ids exactly as the model's own preprocessing produces them (after truncation)."""
    features = model.preprocess([text])
    ids = features["input_ids"][0]
    mask = features["attention_mask"][0]
    return [int(i) for i, m in zip(ids.tolist(), mask.tolist()) if m]


def untruncated_len(model: SentenceTransformer, text: str) -> int:
    return len(model.tokenizer(text, truncation=False)["input_ids"])


def load_st(model_dir: Path | str) -> SentenceTransformer:
    model = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32, p.dtype
    return model


# ---------------------------------------------------------------------------
# Deliverables 2-5: the MiniLM references
# ---------------------------------------------------------------------------


def write_parity_texts(texts: list[str], out_dir: Path) -> None:
    write_jsonl(out_dir / "parity_texts.jsonl", [{"text": t} for t in texts])


def make_minilm_reference(model_dir: Path, texts: list[str], out_dir: Path) -> dict:
    model = load_st(model_dir)
    assert model.max_seq_length == MINILM_MAX_SEQ, model.max_seq_length
    emb = encode(model, texts)
    rows, truncated = [], 0
    for text, vec in zip(texts, emb):
        ids = token_ids(model, text)
        full = untruncated_len(model, text)
        if full > MINILM_MAX_SEQ:
            truncated += 1
            assert len(ids) == MINILM_MAX_SEQ
        else:
            assert len(ids) == full
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
        rows.append({"text": text, "tokens": len(ids), "input_ids": ids, "embedding": floats(vec)})
    write_jsonl(out_dir / "minilm_reference.jsonl", rows)
    tok_mismatch = check_tokenizer_json(model_dir, rows, "right")
    return {"texts": len(rows), "truncated": truncated, "tokenizer_json_mismatches": tok_mismatch}


def check_tokenizer_json(model_dir: Path, rows: list[dict], side: str) -> int:
    """Compare the ids with what the bare tokenizer.json (the file Fletcher reads) gives."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MINILM_MAX_SEQ, direction=side)
    bad = 0
    for row in rows:
        ids = tok.encode(row["text"]).ids
        if ids != row["input_ids"]:
            bad += 1
            print(f"  tokenizer.json differs from sentence-transformers on {row['text'][:40]!r}", file=sys.stderr)
    return bad


def make_pooling_references(model_dir: Path, texts: list[str], out_dir: Path, main_ref: np.ndarray) -> None:
    transformer = Transformer(str(model_dir), max_seq_length=MINILM_MAX_SEQ, model_kwargs={"dtype": torch.float32})
    dim = transformer.get_embedding_dimension() if hasattr(transformer, "get_embedding_dimension") else 384
    for mode in POOL_MODES:
        model = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode=mode)], device="cpu")
        model.eval()
        emb = encode(model, texts)
        if mode == "mean":  # the model's own pipeline is mean + Normalize
            normed = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            assert np.abs(normed - main_ref).max() < 1e-6
        write_jsonl(
            out_dir / f"minilm_pool_{mode}.jsonl",
            [{"text": t, "embedding": floats(v)} for t, v in zip(texts, emb)],
        )


def make_left_truncation_reference(model_dir: Path, texts: list[str], out_dir: Path) -> int:
    model = load_st(model_dir)
    model.tokenizer.truncation_side = "left"
    emb = encode(model, texts)
    cls_id, sep_id = model.tokenizer.cls_token_id, model.tokenizer.sep_token_id
    rows, truncated = [], 0
    for text, vec in zip(texts, emb):
        ids = token_ids(model, text)
        full = model.tokenizer(text, truncation=False)["input_ids"]
        assert ids[0] == cls_id and ids[-1] == sep_id
        if len(full) > MINILM_MAX_SEQ:
            truncated += 1
            # [CLS] + the last 254 content tokens + [SEP]
            assert ids == [cls_id] + full[1:-1][-(MINILM_MAX_SEQ - 2):] + [sep_id]
        else:
            assert ids == full
        rows.append({"text": text, "tokens": len(ids), "input_ids": ids, "embedding": floats(vec)})
    write_jsonl(out_dir / "minilm_left_truncation.jsonl", rows)
    assert check_tokenizer_json(model_dir, rows, "left") == 0
    return truncated


# ---------------------------------------------------------------------------
# Deliverable 6: tiny random models
# ---------------------------------------------------------------------------

TINY_MAX_SEQ = 48
TINY_COMMON = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64)
TINY_MODELS = [
    # name, architecture, hidden_act, layer_norm_eps, stored dtype, pooling, normalize, seed
    dict(name="bert-gelu-f32", arch="bert", act="gelu", eps=1e-12, dtype=torch.float32,
         pooling="mean", normalize=True, seed=1),
    dict(name="bert-gelu-new-f16", arch="bert", act="gelu_new", eps=1e-5, dtype=torch.float16,
         pooling="cls", normalize=False, seed=2),
    dict(name="bert-relu-bf16", arch="bert", act="relu", eps=1e-12, dtype=torch.bfloat16,
         pooling="max", normalize=False, seed=3),
    dict(name="xlmr-f32", arch="xlmr", act="gelu", eps=1e-5, dtype=torch.float32,
         pooling="mean", normalize=True, seed=4),
]
BERT_SPECIALS = dict(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]")
XLMR_SPECIALS = dict(cls="<s>", pad="<pad>", sep="</s>", unk="<unk>", mask="<mask>")


def train_tiny_tokenizer(lines: list[str], specials: dict[str, str], order: list[str]) -> Tokenizer:
    """A WordPiece tokenizer of 1000 tokens, BERT normalizer and pre-tokenizer.

    `order` lists the special-token roles in id order (ids 0, 1, 2, ...).
    """
    special_tokens = [specials[role] for role in order]
    tok = Tokenizer(models.WordPiece(unk_token=specials["unk"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=1000,
        min_frequency=2,
        special_tokens=special_tokens,
        limit_alphabet=150,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    cls, sep = specials["cls"], specials["sep"]
    if cls == "[CLS]":
        pair = f"{cls} $A {sep} $B:1 {sep}:1"
    else:  # RoBERTa style
        pair = f"{cls} $A {sep} {sep} $B {sep}"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=pair,
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    for i, t in enumerate(special_tokens):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def tiny_config(spec: dict, vocab_size: int):
    if spec["arch"] == "bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_act=spec["act"], layer_norm_eps=spec["eps"],
            max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
            initializer_range=0.2, **TINY_COMMON,
        )
    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_act=spec["act"], layer_norm_eps=spec["eps"],
        max_position_embeddings=64 + 2, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, initializer_range=0.2, **TINY_COMMON,
    )


def build_tiny_model(spec: dict, vocab_size: int):
    """Random weights; biases and LayerNorm parameters randomized too, so none is a no-op."""
    torch.manual_seed(spec["seed"])
    config = tiny_config(spec, vocab_size)
    model = BertModel(config) if spec["arch"] == "bert" else XLMRobertaModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    return model.to(spec["dtype"])


def pooling_config(dim: int, mode: str) -> dict:
    return {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": mode == "mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens": mode == "weightedmean",
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": True,
    }


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def save_tiny_dir(spec: dict, model, tok: Tokenizer, specials: dict[str, str], out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    # Keys that configs written by older transformers releases carry.
    config.setdefault("torch_dtype", str(spec["dtype"]).replace("torch.", ""))
    config.setdefault("position_embedding_type", "absolute")
    write_json(out / "config.json", dict(sorted(config.items())))
    tok.save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config["max_position_embeddings"] - (2 if spec["arch"] == "xlmr" else 0),
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **{f"{role}_token": t for role, t in specials.items()},
    }
    if spec["arch"] == "xlmr":
        tok_config.update(bos_token="<s>", eos_token="</s>")
    write_json(out / "tokenizer_config.json", tok_config)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec["normalize"]:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        # sentence-transformers 6 writes this file; older releases leave the folder empty.
        write_json(out / "2_Normalize" / "config.json",
                   {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})
    write_json(out / "modules.json", modules)
    write_json(out / "sentence_bert_config.json", {"max_seq_length": TINY_MAX_SEQ, "do_lower_case": False})
    write_json(out / "1_Pooling" / "config.json", pooling_config(TINY_COMMON["hidden_size"], spec["pooling"]))


def verify_tiny_dir(spec: dict, out: Path, texts: list[str], emb: np.ndarray, model: SentenceTransformer) -> int:
    """Reload checks: stored dtype, sequence cap, truncation, padding in batches."""
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert dtypes == {spec["dtype"]}, dtypes
    assert model.max_seq_length == TINY_MAX_SEQ, model.max_seq_length
    truncated = 0
    for text in texts:
        ids = token_ids(model, text)
        if untruncated_len(model, text) > TINY_MAX_SEQ:
            truncated += 1
            assert len(ids) == TINY_MAX_SEQ
    assert truncated > 0
    # Batched (padded) encoding must agree with one-at-a-time.
    with torch.inference_mode():
        batched = model.encode(texts, batch_size=8, convert_to_numpy=True, show_progress_bar=False)
    assert np.abs(batched - emb).max() < 1e-5, np.abs(batched - emb).max()
    if spec["normalize"]:
        assert np.abs(np.linalg.norm(emb, axis=1) - 1).max() < 1e-5
    # The bare tokenizer.json gives the same ids once truncated.
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.enable_truncation(TINY_MAX_SEQ)
    for text in texts:
        assert tok.encode(text).ids == token_ids(model, text)
    return truncated


def tiny_tokenizer(out_dir: Path, source: str, lines: list[str], specials: dict[str, str],
                   order: list[str], retrain: bool) -> Tokenizer:
    """The tokenizer already in tiny/<source>/, or a newly trained one.

    tokenizers' trainer breaks frequency ties in hash-map order, so two trainings on the
    same lines give slightly different vocabularies; reusing the stored tokenizer keeps
    reruns byte-identical.
    """
    path = out_dir / "tiny" / source / "tokenizer.json"
    if path.exists() and not retrain:
        return Tokenizer.from_file(str(path))
    return train_tiny_tokenizer(lines, specials, order)


def make_tiny_models(corpus_dir: Path, texts: list[str], out_dir: Path, retrain: bool) -> dict:
    lines = read_corpus_lines(corpus_dir / "corpus-pypi-20k.jsonl", list(range(400)))
    bert_tok = tiny_tokenizer(out_dir, "bert-gelu-f32", lines, BERT_SPECIALS,
                              ["pad", "unk", "cls", "sep", "mask"], retrain)
    xlmr_tok = tiny_tokenizer(out_dir, "xlmr-f32", lines, XLMR_SPECIALS,
                              ["cls", "pad", "sep", "unk", "mask"], retrain)
    report = {}
    for spec in TINY_MODELS:
        tok, specials = (bert_tok, BERT_SPECIALS) if spec["arch"] == "bert" else (xlmr_tok, XLMR_SPECIALS)
        out = out_dir / "tiny" / spec["name"]
        hf_model = build_tiny_model(spec, tok.get_vocab_size())
        save_tiny_dir(spec, hf_model, tok, specials, out)
        model = load_st(out)  # float32 computation on the stored (rounded) weights
        emb = encode(model, texts)
        rows = [
            {"text": t, "tokens": len(token_ids(model, t)), "embedding": floats(v)} for t, v in zip(texts, emb)
        ]
        write_jsonl(out / "reference.jsonl", rows)
        truncated = verify_tiny_dir(spec, out, texts, emb, model)
        report[spec["name"]] = {"truncated": truncated, "bytes": dir_size(out)}
    return report


# ---------------------------------------------------------------------------


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="all-MiniLM-L6-v2 directory")
    parser.add_argument("out_dir", type=Path, help="where to write (tests/data)")
    parser.add_argument("--corpus-dir", type=Path, default=Path("/work/shared/bench"))
    parser.add_argument("--retrain-tokenizers", action="store_true",
                        help="train new tiny-model tokenizers even if OUT_DIR/tiny holds some")
    args = parser.parse_args()
    torch.manual_seed(0)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    texts = build_texts(args.corpus_dir)
    assert len(texts) >= 120 and len(set(texts)) == len(texts)
    write_parity_texts(texts, out_dir)

    main_report = make_minilm_reference(args.model_dir, texts, out_dir)
    main_ref = np.array(
        [json.loads(line)["embedding"] for line in open(out_dir / "minilm_reference.jsonl", encoding="utf-8")],
        dtype=np.float32,
    )
    make_pooling_references(args.model_dir, texts[:N_POOL], out_dir, main_ref[:N_POOL])
    left_truncated = make_left_truncation_reference(args.model_dir, texts[:N_POOL], out_dir)
    tiny_report = make_tiny_models(args.corpus_dir, texts[:N_TINY], out_dir, args.retrain_tokenizers)

    print(f"texts: {main_report['texts']}")
    print(f"MiniLM truncated at {MINILM_MAX_SEQ} tokens: {main_report['truncated']} of {len(texts)}")
    print(f"tokenizer.json ids differing from sentence-transformers: {main_report['tokenizer_json_mismatches']}")
    print(f"left truncation: {left_truncated} of {N_POOL} truncated")
    for name, rep in tiny_report.items():
        print(f"tiny/{name}: {rep['truncated']} of {N_TINY} truncated at {TINY_MAX_SEQ}, {rep['bytes']} bytes")
    print("files:")
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            print(f"  {path.stat().st_size:>9}  {path.relative_to(out_dir)}")


if __name__ == "__main__":
    main()
