"""Scoring RAIN runs: LLM judges (OpenAI-compatible or local HF), refusal ASR, and the report.

Entry points: `rain.judge.cli.judge_main(argv)` (`rain judge`) and `report_main(argv)`
(`rain report`). Nothing heavy is imported here: torch, transformers and matplotlib load only
when a local judge or the plot needs them.
"""

from rain.judge.config import JudgeConfig, JudgeError

__all__ = ["JudgeConfig", "JudgeError"]
