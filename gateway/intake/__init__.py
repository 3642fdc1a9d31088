"""The flow of one submission: decode, validate and route (fastcore), reserve, produce, settle doubts."""
