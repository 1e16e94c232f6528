#!/usr/bin/env python3
"""Writes docs/API.md, the HTTP API guide, from the node's OpenAPI document.

    grokforge openapi | scripts/api-doc.py > docs/API.md
    curl -s -H "Authorization: Bearer $T" http://127.0.0.1:8080/openapi.json | scripts/api-doc.py
    scripts/api-doc.py --check docs/API.md < openapi.json   # exit 1 when docs/API.md differs

The document comes from the handlers' types (`gateway/src/openapi.rs`), so the guide says what
the server does; `tests/api_doc.rs` fails when docs/API.md is not what this script makes of the
binary's `grokforge openapi`. Standard library only; the output depends on nothing but the
document (keys are visited in the document's order, which utoipa keeps stable).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

Json = dict[str, Any]

METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"]
ANCHOR_DROP = re.compile(r"[^a-z0-9 _-]")


def anchor(text: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to dashes."""
    return ANCHOR_DROP.sub("", text.lower()).replace(" ", "-")


def cell(text: Any) -> str:
    """Text that stays in one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def schema_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: Json | None) -> str:
    """A schema as a short type expression: `string (uuid)`, `[ModelRecord](#modelrecord)[]`,
    `"all" \\| "primary"`, `integer ≥ 0 or null`."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = schema_name(schema["$ref"])
        return f"[{name}](#{anchor(name)})"
    for combinator, word in (("oneOf", " or "), ("anyOf", " or "), ("allOf", " and ")):
        if combinator in schema:
            parts = [type_of(part) for part in schema[combinator]]
            if combinator == "allOf" and len(parts) == 1:
                return parts[0]
            return word.join(dict.fromkeys(parts))
    if "enum" in schema:
        values = " \\| ".join(json.dumps(v) for v in schema["enum"])
        return values if len(schema["enum"]) > 0 else "never"
    if "const" in schema:
        return json.dumps(schema["const"])
    types = schema.get("type", "object" if "properties" in schema else "any")
    types = types if isinstance(types, list) else [types]
    nullable = "null" in types
    rendered = []
    for kind in (t for t in types if t != "null"):
        if kind == "array":
            rendered.append(f"{type_of(schema.get('items'))}[]")
        elif kind == "object" and "additionalProperties" in schema and not schema.get("properties"):
            values = schema["additionalProperties"]
            rendered.append("object" if values is True else f"map of {type_of(values)}")
        else:
            text = kind
            if "format" in schema:
                text += f" ({schema['format']})"
            bounds = []
            if "minimum" in schema:
                bounds.append(f"≥ {schema['minimum']}")
            if "exclusiveMinimum" in schema:
                bounds.append(f"> {schema['exclusiveMinimum']}")
            if "maximum" in schema:
                bounds.append(f"≤ {schema['maximum']}")
            if "maxLength" in schema:
                bounds.append(f"at most {schema['maxLength']} characters")
            if bounds:
                text += " " + ", ".join(bounds)
            rendered.append(text)
    text = " or ".join(rendered) or "null"
    return f"{text} or null" if nullable and rendered else text


def description_of(schema: Json | None) -> str:
    if not schema:
        return ""
    text = schema.get("description", "")
    if schema.get("default") is not None:
        text = f"{text} Default `{json.dumps(schema['default'])}`.".strip()
    if not text and "allOf" in schema:
        text = " ".join(description_of(part) for part in schema["allOf"] if "$ref" not in part)
    return text


def field_rows(schema: Json, prefix: str = "") -> list[str]:
    """One row per property; an inline object's own properties follow it as `name.field`."""
    required = set(schema.get("required") or [])
    rows = []
    for name, field in (schema.get("properties") or {}).items():
        inline = field.get("properties") and "$ref" not in field
        kind = "object" if inline else type_of(field)
        description = "" if inline and field.get("description") == schema.get("description") else description_of(field)
        rows.append(
            f"| `{prefix}{name}` | {cell(kind)} | {'yes' if name in required else ''} | {cell(description)} |"
        )
        if inline:
            rows += field_rows(field, f"{prefix}{name}.")
    return rows


def fields_table(schema: Json) -> list[str]:
    rows = field_rows(schema)
    if not rows:
        return []
    return ["| field | type | required | description |", "|---|---|---|---|", *rows]


def discriminator(variant: Json) -> tuple[str, str] | None:
    """The (property, value) that tags a variant of a `oneOf`: a property with a one-value enum."""
    for name, field in (variant.get("properties") or {}).items():
        values = field.get("enum")
        if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
            return name, values[0]
    return None


def render_schema(name: str, schema: Json) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    table = fields_table(schema)
    if table:
        lines += table + [""]
        extra = schema.get("additionalProperties")
        if extra is False:
            lines += ["Other fields are refused.", ""]
    else:
        variants = schema.get("oneOf") or schema.get("anyOf")
        found = [discriminator(variant) for variant in variants or []]
        tags = [tag for tag in found if tag is not None]
        if variants and len(tags) == len(variants):
            lines += [f"One of {len(variants)} objects, told apart by `{tags[0][0]}`:", ""]
            for variant, (tag, value) in zip(variants, tags):
                lines += [f"#### {name}: `{tag}` = `{value}`", ""]
                text = description_of(variant)
                if not text:
                    text = next((description_of(f) for f in (variant.get("properties") or {}).values() if f.get("properties")), "")
                if text:
                    lines += [text.strip(), ""]
                lines += fields_table(variant) + [""]
        elif variants:
            lines += ["One of:", ""]
            for variant in variants:
                summary = type_of(variant) if "properties" not in variant else _object_summary(variant)
                text = description_of(variant)
                lines.append(f"- {summary}" + (f": {' '.join(text.split())}" if text else ""))
            lines.append("")
        else:
            lines += [f"Type: {type_of(schema)}.", ""]
    return lines


def _object_summary(schema: Json) -> str:
    """An inline object (a tagged enum's variant) as `{type: "a", data: …}`."""
    parts = []
    for name, field in (schema.get("properties") or {}).items():
        parts.append(f"`{name}`: {type_of(field)}")
    return "{" + ", ".join(parts) + "}"


def operation_auth(operation: Json, document: Json) -> str:
    security = operation.get("security", document.get("security"))
    if security is None or security == [] or all(not requirement for requirement in security):
        return "none"
    schemes = []
    for requirement in security:
        for scheme, scopes in requirement.items():
            text = f"`{scheme}`"
            if scopes:
                roles = [f"`{scope}`" for scope in scopes]
                text += " with role " + (" or ".join(roles) if len(roles) < 3 else ", ".join(roles[:-1]) + " or " + roles[-1])
            schemes.append(text)
    return "; or ".join(schemes)


def body_of(content: Json | None) -> str:
    if not content:
        return ""
    parts = []
    for media, entry in content.items():
        schema = entry.get("schema")
        parts.append(f"`{media}`" + (f" {type_of(schema)}" if schema else ""))
    return "; ".join(parts)


def render_operation(path: str, method: str, operation: Json, document: Json) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if operation.get("summary"):
        lines += [operation["summary"].strip(), ""]
    if operation.get("description") and operation.get("description") != operation.get("summary"):
        lines += [operation["description"].strip(), ""]
    lines += [f"Auth: {operation_auth(operation, document)}.", ""]
    parameters = operation.get("parameters") or []
    if parameters:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for parameter in parameters:
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {cell(type_of(parameter.get('schema')))} "
                f"| {'yes' if parameter.get('required') else ''} | {cell(parameter.get('description', ''))} |"
            )
        lines.append("")
    request = operation.get("requestBody")
    if request:
        text = body_of(request.get("content"))
        if request.get("description"):
            text += f" — {' '.join(request['description'].split())}"
        lines += [f"Body{'' if request.get('required') else ' (optional)'}: {text}", ""]
    responses = operation.get("responses") or {}
    if responses:
        lines += ["| status | meaning | body |", "|---|---|---|"]
        for status, response in responses.items():
            response = resolve(response, document)
            body = body_of(response.get("content"))
            headers = ", ".join(f"`{name}`" for name in response.get("headers") or {})
            if headers:
                body = f"{body}; headers {headers}" if body else f"headers {headers}"
            lines.append(f"| {status} | {cell(response.get('description', ''))} | {cell(body)} |")
        lines.append("")
    return lines


def resolve(item: Json, document: Json) -> Json:
    """`item`, or what its `$ref` (`#/components/...`) points to."""
    ref = item.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return item
    target: Any = document
    for part in ref[2:].split("/"):
        target = target[part]
    return target


def group_of(path: str, operation: Json) -> str:
    tags = operation.get("tags")
    if tags:
        return tags[0]
    return path.strip("/").split("/")[0].split(".")[0] or "root"


def render(document: Json) -> str:
    info = document.get("info", {})
    lines = [
        f"# {info.get('title', 'HTTP API')} — HTTP API",
        "",
        "<!-- Generated by scripts/api-doc.py from the OpenAPI document (`grokforge openapi`, the",
        "     same as a node's GET /openapi.json). Do not edit: change the handlers' types or",
        "     gateway/src/openapi.rs, then run `grokforge openapi | scripts/api-doc.py > docs/API.md`;",
        "     tests/api_doc.rs fails while this file is out of date. -->",
        "",
    ]
    if info.get("description"):
        lines += [info["description"].strip(), ""]
    lines += [f"OpenAPI {document.get('openapi', '?')}, API version {info.get('version', '?')}.", ""]

    schemes = (document.get("components") or {}).get("securitySchemes") or {}
    if schemes:
        lines += ["## Authentication", ""]
        for name, scheme in schemes.items():
            if scheme.get("type") == "http":
                how = f"HTTP `{scheme.get('scheme')}` authentication" + (
                    f" ({scheme['bearerFormat']})" if scheme.get("bearerFormat") else ""
                )
            elif scheme.get("type") == "apiKey":
                how = f"API key in the {scheme.get('in')} parameter `{scheme.get('name')}`"
            else:
                how = scheme.get("type", "?")
            text = f"- `{name}` — {how}."
            if scheme.get("description"):
                text += " " + " ".join(scheme["description"].split())
            lines.append(text)
        lines.append("")

    operations: dict[str, list[tuple[str, str, Json]]] = {}
    for path, item in (document.get("paths") or {}).items():
        for method in METHODS:
            if method in item:
                operations.setdefault(group_of(path, item[method]), []).append((path, method, item[method]))

    tag_names = [tag["name"] for tag in document.get("tags") or []]
    groups = [g for g in tag_names if g in operations] + [g for g in operations if g not in tag_names]
    lines += ["## Routes", "", "| route | summary |", "|---|---|"]
    for group in (operations[g] for g in groups):
        for path, method, operation in group:
            title = f"`{method.upper()} {path}`"
            lines.append(f"| [{title}](#{anchor(f'{method} {path}')}) | {cell(operation.get('summary', ''))} |")
    lines.append("")
    tag_descriptions = {tag["name"]: tag.get("description", "") for tag in document.get("tags") or []}
    order = list(tag_descriptions) + [group for group in operations if group not in tag_descriptions]
    for group in (group for group in order if group in operations):
        entries = operations[group]
        lines += [f"## {group}", ""]
        if tag_descriptions.get(group):
            lines += [tag_descriptions[group].strip(), ""]
        for path, method, operation in entries:
            lines += render_operation(path, method, operation, document)

    schemas = (document.get("components") or {}).get("schemas") or {}
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in schemas.items():
            lines += render_schema(name, schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("document", nargs="?", default="-", help="OpenAPI JSON file (default: standard input)")
    parser.add_argument("--check", metavar="API_MD", help="compare with this file instead of printing")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.document == "-" else open(args.document, encoding="utf-8").read()
    markdown = render(json.loads(text))
    if args.check is None:
        sys.stdout.write(markdown)
        return 0
    try:
        current = open(args.check, encoding="utf-8").read()
    except FileNotFoundError:
        current = ""
    if current == markdown:
        return 0
    print(
        f"{args.check} is not what the OpenAPI document says; regenerate it with\n"
        f"  grokforge openapi | scripts/api-doc.py > {args.check}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
