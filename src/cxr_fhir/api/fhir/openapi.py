"""What the /fhir routes take, for the published OpenAPI (the handlers read raw bodies themselves).

It names the resource types served (as /fhir/metadata does) and the bodies each route takes, so
that generated requests (schemathesis) and client generators reach the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import Parameter

from .providers import STORED_TYPES

# Any other type still gets its 404 from the handler.
ResourceType = Annotated[str, Parameter(description="a FHIR resource type served here (see /fhir/metadata)",
                                        schema_extra={"enum": [*STORED_TYPES, "Binary",
                                                               "OperationDefinition"]})]
Rid = Annotated[str, Parameter(description="the logical id ([A-Za-z0-9-.]{1,64})")]
Vid = Annotated[str, Parameter(description="the version id (meta.versionId)")]


def _object(required: list[str] | None = None, **properties: Schema) -> Schema:
    props: dict[str, Schema | Reference] = dict(properties)
    return Schema(type=OpenAPIType.OBJECT, required=required, properties=props or None)


_TEXT, _BYTES = Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
_RESOURCE = _object(["resourceType"], resourceType=Schema(type=OpenAPIType.STRING, enum=list(STORED_TYPES)),
                    id=_TEXT)
_BUNDLE = _object(["resourceType", "type"], resourceType=Schema(type=OpenAPIType.STRING, const="Bundle"),
                  type=Schema(type=OpenAPIType.STRING, enum=["batch", "transaction"]),
                  entry=Schema(type=OpenAPIType.ARRAY, items=_object(
                      ["request"], fullUrl=_TEXT, resource=_RESOURCE, request=_object(
                          ["method", "url"],
                          method=Schema(type=OpenAPIType.STRING, enum=["GET", "POST", "PUT", "DELETE"]),
                          url=_TEXT, ifMatch=_TEXT, ifNoneExist=_TEXT))))
_PARAMETERS = _object(["resourceType", "parameter"], resourceType=Schema(type=OpenAPIType.STRING, const="Parameters"),
                      parameter=Schema(type=OpenAPIType.ARRAY, items=_object(
                          ["name"], name=Schema(type=OpenAPIType.STRING, enum=["subject", "image"]),
                          valueReference=_object(reference=_TEXT),
                          resource=_object(["resourceType"],
                                           resourceType=Schema(type=OpenAPIType.STRING, const="Binary"),
                                           contentType=Schema(type=OpenAPIType.STRING, enum=["image/png", "image/jpeg",
                                                                                            "application/dicom"]),
                                           data=Schema(type=OpenAPIType.STRING, content_encoding="base64")))))


def _body_operation(**content: Schema) -> type[Operation]:
    """The handlers read their bodies themselves (raw bytes: FHIR JSON, images); this puts what they
    take into the published OpenAPI, which Litestar cannot infer from a handler without ``data``."""
    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(required=True, content={
                media: OpenAPIMediaType(schema=schema) for media, schema in content.items()})

    return WithBody


RESOURCE_BODY = _body_operation(**{"application/fhir+json": _RESOURCE})
BUNDLE_BODY = _body_operation(**{"application/fhir+json": _BUNDLE})
ANALYZE_BODY = _body_operation(**{"application/fhir+json": _PARAMETERS, "image/png": _BYTES, "image/jpeg": _BYTES,
                                  "application/dicom": _BYTES})
