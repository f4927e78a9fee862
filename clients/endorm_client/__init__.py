"""Python SDK of the EndoRM reward server.

    from endorm_client import RewardClient, AsyncRewardClient

Trainer adapters (imported lazily, they need the trainer installed):
``endorm_client.integrations.trl``, ``.openrlhf``, ``.verl``.
"""

from endorm_client._core import RetryPolicy
from endorm_client.client import AsyncRewardClient, RewardClient
from endorm_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DeadlineExceededError,
    EndoRMError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from endorm_client.types import (
    CompareResponse,
    ErrorBody,
    ItemError,
    ItemsFailed,
    Message,
    ModelCard,
    ScoreItem,
    ScoreResponse,
    ScoreResult,
    Terms,
    TokenReward,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncRewardClient",
    "AuthenticationError",
    "BadRequestError",
    "CompareResponse",
    "DeadlineExceededError",
    "EndoRMError",
    "ErrorBody",
    "InternalServerError",
    "InvalidRequestError",
    "ItemError",
    "ItemsFailed",
    "Message",
    "ModelCard",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "RewardClient",
    "ScoreItem",
    "ScoreResponse",
    "ScoreResult",
    "ServiceUnavailableError",
    "Terms",
    "TokenReward",
    "Usage",
]
