"""fewstep for discrete data: masked (absorbing-state) and uniform diffusion over token sequences,
with learnable few-step samplers (LSD/LSD+, Fu et al. 2025).

This first layer holds the data every model here trains on, offline on any machine: Python's own
documentation and standard-library sources split by document (``corpus``), and a byte-level BPE
tokenizer trained locally with Hugging Face ``tokenizers`` (``tokenizer``).
"""

from .corpus import Corpus, Document, python_corpus, split_documents, token_blocks
from .tokenizer import TextTokenizer, train_tokenizer

__all__ = ["Corpus", "Document", "TextTokenizer", "python_corpus", "split_documents", "token_blocks", "train_tokenizer"]
