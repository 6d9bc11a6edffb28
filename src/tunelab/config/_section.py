"""The base of every config section: unknown keys rejected, assignments validated, no inf/NaN numbers."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
