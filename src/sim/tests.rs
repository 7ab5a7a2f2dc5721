// tests: written below
