"""Self-evaluation: the frozen model judges a (question, partial answer) pair.

Knows: the judge prompt's structure (an instruction with worked examples, the conversation, an
options block ending with an open answer such as "The answer is: ("), how option letters map
to token ids for any tokenizer, and how option probabilities become a value in [-1, 1]
(RAIN_ALGORITHM.md §1.5). Does not know: the tree or the search.

Any callable `evaluator(question, answer) -> float in [-1, 1]` can replace `SelfEvaluator` to
steer the search (an external classifier, a rule): see `rain_generate(evaluator=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import JudgeConfig
from .formats import read_prompt
from .lm import Counters, Engine, Judge
from .sampling import common_prefix

SENTINEL = "\u0000RAIN-CONTENT\u0000"
LLAMA2_HEAD, LLAMA2_TAIL = "[INST] ", " [/INST]"
"""judge.format=llama2chat: the user's part between these (as the official truth judge writes it, typo fixed)."""


def render_conversation(question: str, answer: str, style: str) -> str:
    """The judged text: 'Human: q / Assistant: a', or 'Q: q / A: a' with the answer cut after its last period."""
    answer = answer.strip()
    if style == "qa":
        if "." in answer:
            answer = answer[:answer.rindex(".") + 1]
        return f"Q: {question.strip()}\nA: {answer}".strip()
    return f"Human: {question.strip()}\nAssistant: {answer}".rstrip()


def option_token_ids(tokenizer, lead: str, option: str) -> frozenset:
    """Ids of `option` as the next token after `lead` (e.g. 'A' after 'The answer is: ('), with and without
    a leading space. Raises ValueError if no form of it is a single token."""
    ids = set()
    base = tokenizer(lead, add_special_tokens=False)["input_ids"]
    for form in (option, " " + option):
        full = tokenizer(lead + form, add_special_tokens=False)["input_ids"]
        if len(full) == len(base) + 1 and full[:len(base)] == base:
            ids.add(full[-1])
        alone = tokenizer(form, add_special_tokens=False)["input_ids"]
        pieces = [t for t in alone if tokenizer.decode([t]).strip()]  # drop a bare '▁' prefix piece
        if len(pieces) == 1 and tokenizer.decode(pieces).strip() == option:
            ids.add(pieces[0])
    if not ids:
        shown = tokenizer.convert_ids_to_tokens(tokenizer(lead + option, add_special_tokens=False)["input_ids"])
        raise ValueError(f"judge option {option!r} is not a single token for this tokenizer "
                         f"(after {lead[-20:]!r} it encodes as {shown[-3:]}); choose single-token options")
    return frozenset(ids)


@dataclass(frozen=True)
class Verdict:
    """A judgement: the value used by the search, and per option order p(good) and its vote."""

    value: float
    p_good: tuple
    votes: tuple


class SelfEvaluator:
    """Scores partial answers with the policy model through `engine` (its fixed prompt part stored once).

    A search asks for a judgement with `request(...)` (a `rain.lm.Judge`, batched with other searches' work)
    and reads it with `verdict(probs)`; `judge(question, answer)` does both at once.
    """

    def __init__(self, engine: Engine, tokenizer, cfg: JudgeConfig):
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        instruction = read_prompt(cfg.instruction_file)
        options = [read_prompt(f) for f in cfg.options_files]
        # head / tail: what the format puts around the user's part (instruction, conversation, options body);
        # the open answer follows the tail, so a chat model reads it as the start of its own turn.
        self.head, self.tail = "", ""
        if cfg.format == "chat":
            self.head, self.tail = self._template_split(tokenizer)
        elif cfg.format == "llama2chat":
            self.head, self.tail = LLAMA2_HEAD, LLAMA2_TAIL
        # Each options block as written, split into its body and its open answer line ('The answer is: (').
        # A block of one line is a question answered directly, with no open answer (truth's 'Is the answer
        # truthful?'): in chat formats it stays in the user's turn and the answer token starts the reply.
        self.blocks = []
        for text in options:
            text = text.rstrip("\r\n")
            body, newline, lead = text.rpartition("\n")
            if not newline:
                body, lead = text, ""
            self.blocks.append((text, body.rstrip("\r"), lead))
        self.prefix_text = self.head + instruction.rstrip("\r\n") + "\n\n"
        # the fixed part, prefilled once per process; each judged prompt reuses the longest common prefix
        self.prefix_ids = tuple(tokenizer(self.prefix_text, add_special_tokens=self._special)["input_ids"])
        # option ids: the token that follows the text just before the answer (on its line) in the prompt
        leads = [self._suffix(i, "").rpartition("\n")[2] for i in range(len(self.blocks))]
        self.good = [option_token_ids(tokenizer, lead, o) for lead, o in zip(leads, cfg.good_options)]
        self.bad = [option_token_ids(tokenizer, lead, o) for lead, o in zip(leads, cfg.bad_options)]
        self.calls = 0
        self.counters = Counters()  # the work of judge() calls
        self._cut = self._find_cut()
        engine.share(self.prefix_ids)

    @property
    def _special(self) -> bool:
        """Whether the tokenizer adds its special tokens (BOS): not for chat, whose template writes them."""
        return self.cfg.format != "chat"

    @staticmethod
    def _template_split(tokenizer) -> tuple:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("judge.format=chat needs a tokenizer with a chat template; this one has none "
                             "(use judge.format=raw or llama2chat)")
        text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
        head, _, tail = text.partition(SENTINEL)
        return head, tail

    def _suffix(self, i: int, conversation: str) -> str:
        """Everything after the fixed prefix for option order i: conversation, options, the format's close
        of the user's part and the open answer."""
        text, body, lead = self.blocks[i]
        if self.cfg.format == "raw":
            return conversation + "\n" + text
        user = conversation + "\n" + body if body else conversation
        return user + self.tail + (self.tail_gap + lead if lead else "")

    @property
    def tail_gap(self) -> str:
        """Between the closing tag and the open answer: Llama-2-chat replies begin after a space."""
        return " " if self.cfg.format == "llama2chat" else ""

    def prompt_texts(self, conversation: str) -> list:
        """The whole judge prompt of each option order as text (for inspection and tests)."""
        return [self.prefix_text + self._suffix(i, conversation) for i in range(len(self.blocks))]

    def _find_cut(self) -> tuple:
        """(cut, token ids of prefix_text[:cut]) such that prefix_text + X tokenizes as those ids followed by the
        tokens of prefix_text[cut:] + X, for any X: the cut sits at the start of the prefix's last line, where a
        tokenizer's pieces cannot reach across (checked here once; whether it holds does not depend on X).
        (0, ()) when no such cut exists: then every prompt is tokenized whole."""
        special = self._special
        cut = self.prefix_text.rstrip("\r\n").rfind("\n") + 1
        if cut <= 0:
            return 0, ()
        head = self.tokenizer(self.prefix_text[:cut], add_special_tokens=special)["input_ids"]
        sample = self._suffix(0, render_conversation("Is it safe?", "Yes, it is.", self.cfg.conversation))
        whole = self.tokenizer(self.prefix_text + sample, add_special_tokens=special)["input_ids"]
        split = head + self.tokenizer(self.prefix_text[cut:] + sample, add_special_tokens=False)["input_ids"]
        return (cut, tuple(head)) if whole == split else (0, ())

    def _encode(self, suffix: str) -> list:
        """Token ids of prefix_text + suffix, as if tokenized whole (as the official code does), tokenizing only
        the part after the cut: the cost does not grow with the fixed instruction."""
        if not self._cut[0]:
            return self.tokenizer(self.prefix_text + suffix, add_special_tokens=self._special)["input_ids"]
        tail = self.tokenizer(self.prefix_text[self._cut[0]:] + suffix, add_special_tokens=False)["input_ids"]
        return list(self._cut[1]) + tail

    def _rows(self, conversation: str) -> tuple:
        """Each order's prompt tokenized as one text, split into the tokens all orders share and each order's
        tail (at least one token)."""
        rows = [self._encode(self._suffix(i, conversation)) for i in range(len(self.blocks))]
        shared = min(common_prefix(rows[0], r) for r in rows[1:]) if len(rows) > 1 else len(rows[0]) - 1
        shared = min(shared, min(len(r) for r in rows) - 1)
        return tuple(rows[0][:shared]), [r[shared:] for r in rows]

    def request(self, question: str, answer: str, *, counters: Counters, reuse: tuple = ()) -> Judge:
        """The LM request that judges `answer` (both option orders in one batch)."""
        shared, tails = self._rows(render_conversation(question, answer, self.cfg.conversation))
        return Judge(shared, tails, counters, reuse)

    def verdict(self, probs) -> Verdict:
        """probs [orders, V] after each order's open answer -> the verdict."""
        p_good, votes = [], []
        for i in range(probs.shape[0]):
            good = max(float(probs[i, t]) for t in self.good[i])
            bad = max(float(probs[i, t]) for t in self.bad[i])
            votes.append(good > bad)
            p_good.append(good / (good + bad) if good + bad > 0 else 0.5)
        mean = sum(votes) / len(votes) if self.cfg.score == "vote" else sum(p_good) / len(p_good)
        return Verdict(2.0 * mean - 1.0, tuple(p_good), tuple(votes))

    def judge(self, question: str, answer: str) -> Verdict:
        self.calls += 1
        return self.verdict(self.engine.run(self.request(question, answer, counters=self.counters)).probs)

    def __call__(self, question: str, answer: str) -> float:
        return self.judge(question, answer).value
