"""Tiny seeded diffusers components for tests and benchmarks (nothing downloads)."""

from negguide.testing.tiny import FAMILIES, TEST_WORDS, build_clip_tokenizer, build_t5_tokenizer, tiny_pipeline

__all__ = ["FAMILIES", "TEST_WORDS", "build_clip_tokenizer", "build_t5_tokenizer", "tiny_pipeline"]
