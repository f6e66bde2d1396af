"""Schemathesis hooks for tests/test_api_fuzzing.py.

A V2 tensor's shape must equal the rows its data hold: JSON Schema cannot relate two fields'
values, so a request generated as valid may still disagree with itself. This hook makes each
generated valid infer request agree, as any client does; requests generated to be invalid are
left as they are. It runs just before the request is sent, after whatever else changed the case
(the stateful phase's steps had sent a body of 12 numbers with the shape [543, 4]), and it judges
validity by the body alone: a case generated to be invalid may carry a body drawn valid and
unmutated, which schemathesis then checks as a valid request.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

WIDTH = 4


def _body_drawn_valid(case: Any) -> bool:
    body = case.meta.components.get(ParameterLocation.BODY) if case.meta is not None else None
    return body is not None and body.mode is not None and body.mode.is_positive


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if (
        _body_drawn_valid(case)
        and case.operation.path.endswith("/infer")
        and isinstance(case.body, dict)
    ):
        tensor = case.body["inputs"][0]
        data = tensor["data"]
        if isinstance(data[0], list):
            rows = len(data)
        else:
            del data[len(data) - len(data) % WIDTH :]
            rows = len(data) // WIDTH
        tensor["shape"] = [rows, WIDTH]
