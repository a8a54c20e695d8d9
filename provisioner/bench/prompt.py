"""A realistic coding-agent request: what Claude Code sends on a typical turn, in miniature.

A long system prompt (role, rules, tone, environment), tool definitions with JSON
schemas (Read, Edit, Write, Bash, Grep, Glob, TodoWrite), and in the user turn a
source file "read earlier" plus a change request that makes the model write code.
The file comes from this package's own sources (real Python, deterministic), cut
to reach the requested prompt size. Sizes are approximate (characters / 3.6 for
code and prose); the benchmark reports the real token counts llama-server saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHARS_PER_TOKEN = 4.3  # prose and JSON schemas
CODE_CHARS_PER_TOKEN = 3.1  # line-numbered Python as the Read tool shows it

SYSTEM = """You are an interactive CLI tool that helps users with software engineering tasks. Use the \
instructions below and the tools available to you to assist the user.

IMPORTANT: Refuse to write code or explain code that may be used maliciously. Before you begin work, think \
about what the code you are editing is supposed to do based on the filenames and directory structure.

# Tone and style
You should be concise, direct, and to the point. When you run a non-trivial bash command, you should explain \
what the command does and why you are running it. Your output will be displayed on a command line interface. \
Your responses can use GitHub-flavored markdown for formatting. Only use tools to complete tasks. Never use \
tools like Bash or code comments as means to communicate with the user during the session.

# Proactiveness
You are allowed to be proactive, but only when the user asks you to do something. Strike a balance between \
doing the right thing when asked, including taking actions and follow-up actions, and not surprising the user \
with actions you take without asking.

# Following conventions
When making changes to files, first understand the file's code conventions. Mimic code style, use existing \
libraries and utilities, and follow existing patterns.
- NEVER assume that a given library is available, even if it is well known. Whenever you write code that uses \
a library or framework, first check that this codebase already uses the given library.
- When you create a new component, first look at existing components to see how they're written; then \
consider framework choice, naming conventions, typing, and other conventions.
- When you edit a piece of code, first look at the code's surrounding context (especially its imports) to \
understand the code's choice of frameworks and libraries. Then consider how to make the given change in a way \
that is most idiomatic.
- Always follow security best practices. Never introduce code that exposes or logs secrets and keys. Never \
commit secrets or keys to the repository.

# Doing tasks
The user will primarily request you perform software engineering tasks. This includes solving bugs, adding \
new functionality, refactoring code, explaining code, and more. For these tasks the following steps are \
recommended:
- Use the TodoWrite tool to plan the task if required.
- Use the available search tools to understand the codebase and the user's query. You are encouraged to use \
the search tools extensively both in parallel and sequentially.
- Implement the solution using all tools available to you.
- Verify the solution if possible with tests. NEVER assume specific test framework or test script. Check the \
README or search codebase to determine the testing approach.
- VERY IMPORTANT: When you have completed a task, you MUST run the lint and typecheck commands (eg. npm run \
lint, npm run typecheck, ruff, etc.) with Bash if they were provided to you to ensure your code is correct.

# Tool usage policy
- When doing file search, prefer to use the Task tool in order to reduce context usage.
- You have the capability to call multiple tools in a single response. When multiple independent pieces of \
information are requested, batch your tool calls together for optimal performance.

# Code References
When referencing specific functions or pieces of code include the pattern `file_path:line_number` to allow \
the user to easily navigate to the source code location.

Here is useful information about the environment you are running in:
<env>
Working directory: /home/dev/project
Is directory a git repo: Yes
Platform: linux
OS Version: Linux 6.8.12-4-pve
Today's date: 2026-01-15
</env>
"""

TOOLS: list[dict[str, Any]] = [
    {"name": "Read", "description": "Reads a file from the local filesystem. The file_path parameter must be an "
     "absolute path. By default, it reads up to 2000 lines starting from the beginning of the file. You can "
     "optionally specify a line offset and limit. Results are returned using cat -n format, with line numbers "
     "starting at 1.",
     "input_schema": {"type": "object", "properties": {
         "file_path": {"type": "string", "description": "The absolute path to the file to read"},
         "offset": {"type": "number", "description": "The line number to start reading from"},
         "limit": {"type": "number", "description": "The number of lines to read"}},
         "required": ["file_path"], "additionalProperties": False}},
    {"name": "Edit", "description": "Performs exact string replacements in files. You must use your Read tool at "
     "least once in the conversation before editing. When editing text from Read tool output, preserve the exact "
     "indentation (tabs/spaces) as it appears AFTER the line number prefix. The edit will FAIL if old_string is "
     "not unique in the file. Use replace_all for replacing and renaming strings across the file.",
     "input_schema": {"type": "object", "properties": {
         "file_path": {"type": "string", "description": "The absolute path to the file to modify"},
         "old_string": {"type": "string", "description": "The text to replace"},
         "new_string": {"type": "string", "description": "The text to replace it with (must differ)"},
         "replace_all": {"type": "boolean", "default": False,
                         "description": "Replace all occurrences of old_string (default false)"}},
         "required": ["file_path", "old_string", "new_string"], "additionalProperties": False}},
    {"name": "Write", "description": "Writes a file to the local filesystem. This tool will overwrite the existing "
     "file if there is one at the provided path. ALWAYS prefer editing existing files in the codebase. NEVER "
     "write new files unless explicitly required.",
     "input_schema": {"type": "object", "properties": {
         "file_path": {"type": "string", "description": "The absolute path to the file to write"},
         "content": {"type": "string", "description": "The content to write to the file"}},
         "required": ["file_path", "content"], "additionalProperties": False}},
    {"name": "Bash", "description": "Executes a given bash command in a persistent shell session with optional "
     "timeout, ensuring proper handling and security measures. Before executing the command, verify the parent "
     "directory exists. Always quote file paths that contain spaces. Avoid search commands like find and grep: "
     "use Grep and Glob instead.",
     "input_schema": {"type": "object", "properties": {
         "command": {"type": "string", "description": "The command to execute"},
         "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"},
         "description": {"type": "string", "description": "Clear, concise description of what this command "
                         "does in 5-10 words"}},
         "required": ["command"], "additionalProperties": False}},
    {"name": "Grep", "description": "A powerful search tool built on ripgrep. Supports full regex syntax. Filter "
     "files with the glob parameter or the type parameter. Output modes: content shows matching lines, "
     "files_with_matches shows only file paths (default), count shows match counts.",
     "input_schema": {"type": "object", "properties": {
         "pattern": {"type": "string", "description": "The regular expression pattern to search for"},
         "path": {"type": "string", "description": "File or directory to search in"},
         "glob": {"type": "string", "description": "Glob pattern to filter files (e.g. \"*.js\")"},
         "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
         "-n": {"type": "boolean", "description": "Show line numbers in output"}},
         "required": ["pattern"], "additionalProperties": False}},
    {"name": "Glob", "description": "Fast file pattern matching tool that works with any codebase size. Supports "
     "glob patterns like \"**/*.js\". Returns matching file paths sorted by modification time.",
     "input_schema": {"type": "object", "properties": {
         "pattern": {"type": "string", "description": "The glob pattern to match files against"},
         "path": {"type": "string", "description": "The directory to search in"}},
         "required": ["pattern"], "additionalProperties": False}},
    {"name": "TodoWrite", "description": "Use this tool to create and manage a structured task list for your "
     "current coding session. This helps you track progress, organize complex tasks, and demonstrate "
     "thoroughness to the user.",
     "input_schema": {"type": "object", "properties": {"todos": {"type": "array", "items": {
         "type": "object", "properties": {
             "content": {"type": "string", "minLength": 1},
             "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
             "id": {"type": "string"}},
         "required": ["content", "status", "id"]}}},
         "required": ["todos"], "additionalProperties": False}},
]

# real code for the "file in context", most relevant first; all ship with the package
SOURCES = ["gateway/translate_stream.py", "gateway/translate_request.py", "gateway/upstream.py",
           "gateway/translate_tools.py", "gateway/app.py", "engine/run.py", "connectors/ssh.py"]

TASK = ("Add a `max_retries` option to the upstream client in the file above: retry a request that failed "
        "before any byte was streamed, with exponential backoff (0.5 s, 1 s, 2 s), and never retry after the "
        "stream started. Show the complete changed functions and a unit test for the new behaviour.")


def _numbered_code(chars: int) -> tuple[str, str, int]:
    """(path, text, lines): real source shown like the Read tool does, about ``chars`` characters long."""
    root = Path(__file__).resolve().parent.parent
    more = sorted(str(f.relative_to(root)) for d in ("gateway", "engine", "operations", "doctor")
                  for f in (root / d).glob("*.py"))
    out: list[str] = []
    used = 0
    for rel in SOURCES + [m for m in more if m not in SOURCES]:
        lines = [f"# ---- provisioner/{rel}"] + (root / rel).read_text(encoding="utf-8").splitlines()
        for line in lines:
            numbered = f"{len(out) + 1:6}\t{line}\n"
            if used + len(numbered) > chars:
                return "provisioner/" + SOURCES[0], "".join(out), len(out)
            out.append(numbered)
            used += len(numbered)
    return "provisioner/" + SOURCES[0], "".join(out), len(out)


def overhead_tokens(tools: bool = True) -> int:
    """Approximate tokens of everything but the code: system prompt, tools, task, framing."""
    fixed = len(SYSTEM) + len(TASK) + 150 + (len(json.dumps(TOOLS)) if tools else 0)
    return int(fixed / CHARS_PER_TOKEN)


def coding_prompt(tokens: int, *, tools: bool = True) -> dict[str, Any]:
    """The request parts for a prompt of about ``tokens`` tokens (at least the fixed part)."""
    code_tokens = max(0, tokens - overhead_tokens(tools))
    path, code, lines = _numbered_code(int(code_tokens * CODE_CHARS_PER_TOKEN))
    user = (f"I read /home/dev/project/{path} earlier with the Read tool:\n<file path=\"{path}\">\n{code}"
            f"</file>\n\n{TASK}") if code else TASK
    return {"system": SYSTEM, "tools": TOOLS if tools else [], "user": user, "approx_tokens": tokens,
            "code_lines": lines}
