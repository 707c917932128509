"""The test suite, laid out by the module under test (a package, so that equal basenames in
different folders import as different modules)."""
