"""The KV tests; ``kv_contract`` is the suite both KV implementations pass."""

import pytest

# The contract's cases are plain asserts in a helper module: have pytest
# explain their failures as it does in test modules.
pytest.register_assert_rewrite("kv.kv_contract")
