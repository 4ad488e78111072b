"""Bad-input tests (issue 6, part 2): malformed stream messages, webhooks and API calls, fuzzed.

Every class of bad input must end in a specific close code or HTTP error, leave the process serving
and leave other calls untouched; each test records its class's outcome in the reliability table.
"""
