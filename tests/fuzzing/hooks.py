"""Schemathesis hooks for tests/test_api_fuzzing.py.

A V2 tensor's shape must equal the rows its data hold: JSON Schema cannot relate two fields'
values, so a request generated as valid may still disagree with itself. This hook makes each
generated valid infer request agree, as any client does; requests generated to be invalid are
left as they are.
"""

from __future__ import annotations

from typing import Any

import schemathesis

WIDTH = 4


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and case.operation.path.endswith("/infer") and isinstance(case.body, dict):
        tensor = case.body["inputs"][0]
        data = tensor["data"]
        if isinstance(data[0], list):
            rows = len(data)
        else:
            del data[len(data) - len(data) % WIDTH :]
            rows = len(data) // WIDTH
        tensor["shape"] = [rows, WIDTH]
    return case
