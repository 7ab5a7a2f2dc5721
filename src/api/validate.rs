//! Validation the OpenAPI schema cannot express, shared by `plan`, the controllers and tests.
