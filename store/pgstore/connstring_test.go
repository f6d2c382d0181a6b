package pgstore_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store/pgstore"
)

// WithParam sets a parameter in either form of connection string, with a
// value that needs escaping or quoting, as the driver reads it back.
func TestWithParam(t *testing.T) {
	for _, conn := range []string{
		"postgres://relay@db.example/relay",
		"postgres://relay@db.example/relay?sslmode=disable",
		"host=db.example user=relay dbname=relay sslmode=disable",
	} {
		for _, value := range []string{"fedirelay_one", `a 'quoted' \ value&x=y`} {
			cfg, err := pgconn.ParseConfig(pgstore.WithParam(conn, "search_path", value))
			require.NoError(t, err, conn)
			assert.Equal(t, value, cfg.RuntimeParams["search_path"], conn)
			assert.Equal(t, "relay", cfg.User, conn)
		}
	}
}

// RedactConnString never shows a password, in either form.
func TestRedactConnString(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://relay:s3cret@db.example:5432/relay?sslmode=disable", "postgres://relay:xxxxx@db.example:5432/relay?sslmode=disable"},
		{"postgresql:///relay?host=/run/postgresql&password=s3cret", "postgresql:///relay?host=%2Frun%2Fpostgresql&password=xxxxx"},
		{"postgresql://db/relay?password=s3cret&user=relay", "postgresql://db/relay?password=xxxxx&user=relay"},
		{"postgres://relay:s3cret@db.example:port/relay", "(a connection string that does not parse)"},
		{"host=/run/postgresql dbname=relay password=s3cret user=relay", "host=/run/postgresql dbname=relay password=xxxxx user=relay"},
		{"host=db password = 's3 cret' dbname=relay", "host=db password = xxxxx dbname=relay"},
		{"host=db password = 's3 cr\\'et' dbname=relay", "host=db password = xxxxx dbname=relay"},
		{"host=/run/postgresql dbname=relay", "host=/run/postgresql dbname=relay"},
	} {
		got := pgstore.RedactConnString(c.in)
		assert.Equal(t, c.want, got, c.in)
		assert.NotContains(t, got, "s3")
	}
}
