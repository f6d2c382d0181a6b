package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRedactPassword(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://relay:secret@db.internal/relay?sslmode=disable": "postgres://relay:xxxxx@db.internal/relay?sslmode=disable",
		"postgresql://db/relay?password=secret&user=relay":          "postgresql://db/relay?password=xxxxx&user=relay",
		"host=/run/pg user=relay password=secret dbname=relay":      "host=/run/pg user=relay password=xxxxx dbname=relay",
		"host=db password = 'se cr\\'et' dbname=relay":              "host=db password=xxxxx dbname=relay",
		"host=/run/pg user=relay":                                   "host=/run/pg user=relay",
	} {
		assert.Equal(t, want, redactPassword(in), in)
		assert.NotContains(t, redactPassword(in), "secret")
	}
}
