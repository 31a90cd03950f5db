"""Exercise checkers, one module per notebook; :mod:`.common` says what every checker does and shares."""

from .nb01 import check_f_backward, check_row_forward
from .nb02 import check_llama_plan, check_one_all_gather
from .nb03 import check_hybrid_plan
from .nb04 import check_summa_accumulate
from .nb05 import check_sp_block_plan, check_vocab_masking
from .nb07 import check_decode_attention
from .nb08 import check_overlapped_backward

__all__ = ["check_row_forward", "check_f_backward", "check_llama_plan",
           "check_one_all_gather", "check_hybrid_plan", "check_summa_accumulate", "check_vocab_masking",
           "check_sp_block_plan", "check_decode_attention", "check_overlapped_backward"]
