// Which actions the page offers, and the form fields each takes: read from
// the service's OpenAPI document when it serves one, else this built-in list
// (the actions of SlaveAPI when the page was written).

import { authHeaders } from "./api.js";

// Actions that change a machine's state in a way an operator should confirm,
// by action name and by route.
const DESTRUCTIVE = new Set([
  "reboot",
  "disable",
  "power_off",
  "power_cycle",
  "shutdown_buildslave",
  "stop",
  "terminate",
  "aws_stop_instance",
  "aws_terminate_instance",
  "pause_buildslave",
]);

// Actions whose reason the page insists on, though the API takes them without
// one: the reason goes on the machine's bug, for the next person to read.
const REASON_REQUIRED = new Set(["disable", "pause_buildslave"]);

const REASON = { name: "reason", kind: "string", required: true, description: "Why (one line, recorded)" };

export const BUILT_IN = [
  { name: "buildslave_uptime", route: "buildslave_uptime", fields: [] },
  { name: "buildslave_last_activity", route: "buildslave_last_activity", fields: [] },
  { name: "power_status", route: "power_status", fields: [] },
  { name: "reboot", route: "reboot", fields: [] },
  { name: "shutdown_buildslave", route: "shutdown_buildslave", fields: [] },
  {
    name: "disable",
    route: "disable",
    fields: [
      REASON,
      { name: "force", kind: "boolean", description: "Disable even if the buildslave does not shut down" },
    ],
  },
  { name: "pause_buildslave", route: "pause_buildslave", fields: [REASON] },
  { name: "unpause_buildslave", route: "unpause_buildslave", fields: [] },
  { name: "power_on", route: "power_on", fields: [] },
  {
    name: "power_off",
    route: "power_off",
    fields: [{ name: "soft", kind: "boolean", description: "Ask the OS to shut down (ACPI) instead" }],
  },
  { name: "power_cycle", route: "power_cycle", fields: [] },
  {
    name: "boot_device",
    route: "boot_device",
    fields: [{ name: "device", kind: "string", required: true, choices: ["pxe", "disk", "bios"] }],
  },
  { name: "aws_start_instance", route: "start", fields: [] },
  { name: "aws_stop_instance", route: "stop", fields: [] },
  { name: "aws_terminate_instance", route: "terminate", fields: [] },
];

const ACTION_PATH = /^\/slaves\/\{[^}]+\}\/actions\/([^/{}]+)$/;
const FORM = "application/x-www-form-urlencoded";

export function isDestructive(action) {
  return DESTRUCTIVE.has(action.name) || DESTRUCTIVE.has(action.route);
}

// A property's JSON Schema type; yes/no fields are a boolean or one of the yes/no words.
function kindOf(property) {
  const types = [property, ...(property.anyOf || []), ...(property.oneOf || [])].map((each) => each.type);
  for (const kind of ["boolean", "integer", "number"]) {
    if (types.includes(kind)) {
      return kind;
    }
  }
  return "string";
}

function fieldsOf(schema) {
  if (!schema || typeof schema !== "object" || !schema.properties) {
    return [];
  }
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties)
    .filter(([name]) => name !== "waittime")
    .map(([name, property]) => ({
      name,
      kind: kindOf(property),
      description: property.description || "",
      required: required.has(name),
      choices: Array.isArray(property.enum) ? property.enum.map(String) : [],
    }));
}

// The actions an OpenAPI document describes under /slaves/{slave}/actions/<route>,
// each once (an action served under several routes by the route of its own
// name, if it has one), or null when it describes none.
export function fromOpenAPI(document) {
  const builtIn = new Map(BUILT_IN.map((action) => [action.route, action]));
  const found = new Map();
  for (const [path, operations] of Object.entries((document && document.paths) || {})) {
    const match = ACTION_PATH.exec(path);
    const post = operations && operations.post;
    if (!match || !post || post.deprecated) {
      continue;
    }
    const route = match[1];
    const content = (post.requestBody && post.requestBody.content) || {};
    const schema = (content[FORM] || content["multipart/form-data"] || {}).schema;
    const known = builtIn.get(route);
    const fields = schema ? fieldsOf(schema) : (known ? known.fields : []);
    const name = post["x-action"] || (known ? known.name : route);
    if (found.has(name) && found.get(name).route === name) {
      continue;
    }
    if (REASON_REQUIRED.has(name)) {
      fields.filter((field) => field.name === "reason").forEach((field) => {
        field.required = true;
      });
    }
    found.set(name, { name, route, description: post.description || post.summary || "", fields });
  }
  return found.size ? [...found.values()] : null;
}

// The actions to offer: the service's own list when it has one.
export async function loadCatalogue() {
  try {
    const response = await fetch("/openapi.json", { headers: authHeaders(), signal: AbortSignal.timeout(10000) });
    if (response.ok) {
      const listed = fromOpenAPI(await response.json());
      if (listed) {
        return listed;
      }
    }
  } catch (error) {
    // An older service, or none reachable yet: the built-in list will do.
  }
  return BUILT_IN;
}
