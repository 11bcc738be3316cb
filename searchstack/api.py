"""The request and response bodies of every service's endpoints (they also make the OpenAPI docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

MAX_RESULTS = 100
MAX_CANDIDATES = 300
MAX_TEXT_CHARS = 2000


class SearchRequest(BaseModel):
    """The seed API's search request to master-search."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "This is a test query", "n_results": 40, "random_seed": 42}]}
    )

    text: StrictStr = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The search query.")
    n_results: StrictInt = Field(ge=1, le=MAX_RESULTS, description="How many documents to return.")
    random_seed: StrictInt = Field(default=0, description="Seeds the score jitter.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must contain at least one non-whitespace character")
        return text


class ClickRequest(BaseModel):
    """A user clicked one result of a search: `doc_id` from the answer, `query_id` from its `x-query-id`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"doc_id": "1234", "query_id": "3f2a9c..."}]})

    doc_id: StrictStr = Field(min_length=1, max_length=64, description="The clicked document's id.")
    query_id: StrictStr | None = Field(
        default=None, max_length=128, description="The search's `x-query-id` response header (optional)."
    )
    value: float = Field(
        default=0.0, ge=0.0, le=1e6, allow_inf_nan=False,
        description="What the click was worth (e.g. an order's value); summed, with its square, per version: "
                    "the mean value per click is an A/B experiment's mean metric (optional, default 0).",
    )


class ClickResponse(BaseModel):
    recorded: bool
    doc_id: str
    query_id: str | None = None


class TextQuery(BaseModel):
    """A query to an inner search service: top `k` documents for `text`."""

    text: StrictStr = Field(max_length=MAX_TEXT_CHARS)
    k: StrictInt = Field(ge=1, le=MAX_CANDIDATES)


class EmbedRequest(BaseModel):
    text: StrictStr = Field(max_length=MAX_TEXT_CHARS)


class EmbedResponse(BaseModel):
    model: str
    dim: int
    vector: list[float]


class HitsResponse(BaseModel):
    """Document id -> score, best first."""

    hits: dict[str, float]


class ErrorBody(BaseModel):
    error: str
    service: str
    reason: str | None = None
    via: str | None = None
    upstream_status: int | None = None


class Health(BaseModel):
    status: str
    role: str
    version: str
    workload: str
