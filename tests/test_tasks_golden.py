"""Golden strings: the exact messages each bundled template renders (like LLaMA-Factory's
tests/data/test_template.py). A change here changes what SFT trains on and what serving sends,
so it must be deliberate: update the expected strings in the same commit as the template."""

from __future__ import annotations

import pytest

from domain_lm.tasks import TemplateRegistry
from tests.tasks_fixtures import TEMPLATES


def _sys(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _bot(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


GOLDEN = [
    (
        "customer_intent",
        "en",
        1,
        1,
        {"text": "My card payment was declined at the supermarket."},
        [
            _sys(
                "You are a bank's customer-service router. Name the intent of the customer's message in a few words, exactly as "
                "the bank's intent list spells it (for example card arrival, lost or stolen card, transfer fee charged). "
                "Answer with the intent only."
            ),
            _user("Customer message: It has been ten days since you posted my new card and it is still not here.\n\n"
                  "Which customer-service intent is this?"),
            _bot("card arrival"),
            _user("Customer message: My card payment was declined at the supermarket.\n\nWhich customer-service intent is this?"),
        ],
    ),
    (
        "sentiment",
        "zh",
        2,
        1,
        {"text": "公司将于下周召开年度股东大会。"},
        [
            _sys("你是一名银行的金融分析师。只回答一个词。"),
            _user("【该行前三季度净利润同比增长百分之十二，资产质量持续改善。】，上述文字表达了褒义和贬义倾向？请回答积极、消极或中性。"),
            _bot("积极"),
            _user("【公司将于下周召开年度股东大会。】，上述文字表达了褒义和贬义倾向？请回答积极、消极或中性。"),
        ],
    ),
    (
        "sentiment",
        "en",
        1,
        0,
        {"text": "The bank will publish its quarterly results on 28 April."},
        [
            _sys("You are a financial analyst at a bank. Answer with exactly one word."),
            _user(
                "Text: The bank will publish its quarterly results on 28 April.\n\nFrom an investor's point of view, is this text"
                " positive, negative or neutral?"
            ),
        ],
    ),
    (
        "entities",
        "en",
        0,
        1,
        {"text": "Quarterly fee income was broadly unchanged."},
        [
            _sys(
                'You extract named entities from financial texts. Answer with a JSON array only, each item {"text": ..., "type": ...} '
                "where type is ORG (companies and other organisations), PER (people) or LOC (places). Copy each entity exactly as "
                "written, in order of appearance. Answer [] if there are none."
            ),
            _user(
                "List the organisations, people and places in this text.\n\nText: Northbridge Capital said on Tuesday that Maria Lopez"
                " will lead its new office in Singapore."
            ),
            _bot('[{"text":"Northbridge Capital","type":"ORG"},{"text":"Maria Lopez","type":"PER"},{"text":"Singapore","type":"LOC"}]'),
            _user("List the organisations, people and places in this text.\n\nText: Quarterly fee income was broadly unchanged."),
        ],
    ),
    (
        "extraction",
        "zh",
        1,
        0,
        {"text": "截至年末，本行不良贷款率为1.32%，较上年末下降0.05个百分点。", "field": "不良贷款率"},
        [
            _sys(
                '你负责从金融文件中抽取数据。只输出一个 JSON 对象 {"evidence": 原文依据, "value": 数值, "unit": 单位, '
                '"period": 期间}：evidence 为给出该数据的原文句子或短语，须逐字摘自原文；value 为原文所写的数值；'
                "unit 为货币与量级（如 亿元）或 %。若文中没有给出该数据，所有字段均填 null，不要猜测。"
            ),
            _user("根据下面的文件，不良贷款率是多少？\n\n截至年末，本行不良贷款率为1.32%，较上年末下降0.05个百分点。"),
        ],
    ),
    (
        "extraction",
        "en",
        0,
        1,
        {"text": "Revenue was 3 million dollars in 2021.", "field": "revenue", "period": "2021"},
        [
            _sys(
                'You extract figures from financial documents. Answer with one JSON object {"evidence": string, "value": number, '
                '"unit": string, "period": string}: evidence is the line, sentence or phrase that states the figure, copied '
                "exactly from the text; value is the number as written there; unit is the currency and scale (e.g. USD million) "
                "or %. If the text does not state the figure, answer with every field null. Never guess."
            ),
            _user(
                "Document:\nIn 2022 the group reported main business revenue of 12.4 billion yuan, up 9% year on year, while net "
                "profit fell slightly.\n\nExtract: main business revenue for 2022."
            ),
            # Keys in schema order (evidence first), compact: what constrained decoding writes.
            _bot(
                '{"evidence":"In 2022 the group reported main business revenue of 12.4 billion yuan","value":12.4,'
                '"unit":"CNY billion","period":"2022"}'
            ),
            _user("Document:\nRevenue was 3 million dollars in 2021.\n\nExtract: revenue for 2021."),
        ],
    ),
    (
        "report_summary",
        "en",
        2,
        0,
        {"text": "Costs fell 3% while provisions doubled."},
        [
            _sys("You are a bank analyst who writes short, factual summaries. Keep the key figures; add nothing that is not in the text."),
            _user("Give a concise, factual summary of this earnings call: Costs fell 3% while provisions doubled."),
        ],
    ),
    (
        "key_points",
        "zh",
        0,
        0,
        {"text": "受市场利率下行影响，净息差收窄至1.7%。"},
        [
            _sys(
                '你是一名信贷分析师。只输出一个 JSON 对象 {"performance": [...], "risks": [...]}，'
                '分别列出原文中关于经营业绩和风险的要点，每条简短；没有则为 []。'
            ),
            _user("请列出以下报告的核心业绩要点和风险要点。\n\n受市场利率下行影响，净息差收窄至1.7%。"),
        ],
    ),
    (
        "business_line",
        "en",
        1,
        1,
        {"text": "What time does the branch on Main Street open on Saturdays?"},
        [
            _sys("You route bank texts to the right business line. Answer with exactly one of credit card, loan, other."),
            _user(
                "Which business line does this belong to (credit card / loan / other)? I was charged an annual fee on my card even"
                " though I was promised it would be waived."
            ),
            _bot("credit card"),
            _user(
                "Which business line does this belong to (credit card / loan / other)? What time does the branch on Main Street open on"
                " Saturdays?"
            ),
        ],
    ),
    (
        "business_line",
        "zh",
        0,
        0,
        {"text": "我想办理房贷。"},
        [
            _sys("你负责把银行文本分派到对应的业务条线。只回答：信用卡、贷款或其他。"),
            _user("这段文字是关于信用卡还是贷款的？\n\n文本：我想办理房贷。"),
        ],
    ),
]


@pytest.fixture(scope="module")
def reg() -> TemplateRegistry:
    return TemplateRegistry.load(TEMPLATES)


@pytest.mark.parametrize("name,lang,variant,few_shot,inputs,expected", GOLDEN, ids=[f"{g[0]}-{g[1]}-v{g[2]}-k{g[3]}" for g in GOLDEN])
def test_golden_messages(reg, name, lang, variant, few_shot, inputs, expected):
    assert reg.get(name).render_messages(inputs, lang=lang, variant=variant, few_shot=few_shot) == expected


def test_every_bundled_template_has_a_golden_case(reg):
    assert {g[0] for g in GOLDEN} == set(reg.names())


def test_golden_chat_text_through_the_tokenizer(reg, tiny_model_dir):
    """The final prompt string the model sees for one task (tokenizer chat template applied)."""
    from domain_lm.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    messages = reg.get("sentiment").render_messages({"text": "Profit rose 8%."}, lang="en", variant=2)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a financial analyst at a bank. Answer with exactly one word.<|im_end|>\n"
        "<|im_start|>user\nClassify the sentiment (positive / negative / neutral) of this sentence: Profit rose 8%.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
