package storetest

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

func testValues(t *testing.T, newStore factory) {
	subtest(t, newStore, "GetMissing", func(t *testing.T, s store.Store) {
		_, err := s.GetValue(t.Context(), "missing")
		assert.ErrorIs(t, err, store.ErrNotFound)
	})

	subtest(t, newStore, "PutGet", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		binary := make([]byte, 256) // NUL, invalid UTF-8: values are bytes
		for i := range binary {
			binary[i] = byte(i)
		}
		require.NoError(t, s.PutValue(ctx, "relay/key", []byte("-----BEGIN PRIVATE KEY-----")))
		require.NoError(t, s.PutValue(ctx, "binary", binary))
		got, err := s.GetValue(ctx, "relay/key")
		require.NoError(t, err)
		assert.Equal(t, []byte("-----BEGIN PRIVATE KEY-----"), got)
		got, err = s.GetValue(ctx, "binary")
		require.NoError(t, err)
		assert.Equal(t, binary, got)
	})

	subtest(t, newStore, "PutReplaces", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.PutValue(ctx, "k", []byte("a longer first value")))
		require.NoError(t, s.PutValue(ctx, "k", []byte("short")))
		got, err := s.GetValue(ctx, "k")
		require.NoError(t, err)
		assert.Equal(t, []byte("short"), got)
	})

	subtest(t, newStore, "PutEmpty", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.PutValue(ctx, "empty", []byte{}))
		require.NoError(t, s.PutValue(ctx, "nil", nil))
		for _, k := range []string{"empty", "nil"} {
			got, err := s.GetValue(ctx, k)
			assert.NoError(t, err, "an empty value is a stored value: %q", k)
			assert.Empty(t, got, k)
		}
		all, err := s.ListValues(ctx, "")
		require.NoError(t, err)
		assert.Equal(t, []string{"empty", "nil"}, sortedKeys(all))
	})

	subtest(t, newStore, "CreateAbsent", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		got, err := s.CreateValue(ctx, "k", []byte("v1"))
		require.NoError(t, err)
		assert.Equal(t, []byte("v1"), got)
		stored, err := s.GetValue(ctx, "k")
		require.NoError(t, err)
		assert.Equal(t, []byte("v1"), stored)
	})

	subtest(t, newStore, "CreateExisting", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.PutValue(ctx, "k", []byte("existing")))
		got, err := s.CreateValue(ctx, "k", []byte("new"))
		require.NoError(t, err)
		assert.Equal(t, []byte("existing"), got, "CreateValue returns the existing value")
		stored, err := s.GetValue(ctx, "k")
		require.NoError(t, err)
		assert.Equal(t, []byte("existing"), stored, "CreateValue must not overwrite")

		// A value created by CreateValue is kept by the next CreateValue.
		_, err = s.CreateValue(ctx, "k2", []byte("first"))
		require.NoError(t, err)
		got, err = s.CreateValue(ctx, "k2", []byte("second"))
		require.NoError(t, err)
		assert.Equal(t, []byte("first"), got)
	})

	subtest(t, newStore, "Delete", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.PutValue(ctx, "a", []byte("1")))
		require.NoError(t, s.PutValue(ctx, "b", []byte("2")))
		require.NoError(t, s.DeleteValue(ctx, "a"))
		_, err := s.GetValue(ctx, "a")
		assert.ErrorIs(t, err, store.ErrNotFound, "deleted value")
		got, err := s.GetValue(ctx, "b")
		assert.NoError(t, err, "other values are kept")
		assert.Equal(t, []byte("2"), got)
		assert.NoError(t, s.DeleteValue(ctx, "a"), "deleting a deleted key")
		assert.NoError(t, s.DeleteValue(ctx, "never"), "deleting an absent key")

		// A deleted key can be created again.
		got, err = s.CreateValue(ctx, "a", []byte("3"))
		require.NoError(t, err)
		assert.Equal(t, []byte("3"), got)
	})

	subtest(t, newStore, "List", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		empty, err := s.ListValues(ctx, "")
		require.NoError(t, err)
		assert.NotNil(t, empty, "ListValues of an empty store")
		assert.Empty(t, empty)

		// Keys with LIKE and glob metacharacters: prefixes are literal.
		keys := []string{"policy/a", "policy/b", "policyx", "old/policy/c", "key", "monkey",
			"p%1", "pa1", "p_1", "k*1", "kx1", "k[1]", "k?1"}
		for _, k := range keys {
			require.NoError(t, s.PutValue(ctx, k, []byte("v:"+k)))
		}
		for _, c := range []struct {
			prefix string
			want   []string
		}{
			{"policy/", []string{"policy/a", "policy/b"}},
			{"policy", []string{"policy/a", "policy/b", "policyx"}},
			{"policy/a", []string{"policy/a"}},
			{"key", []string{"key"}},
			{"p%", []string{"p%1"}},
			{"p_", []string{"p_1"}},
			{"k*", []string{"k*1"}},
			{"k[", []string{"k[1]"}},
			{"k?", []string{"k?1"}},
			{"", slices.Sorted(slices.Values(keys))},
		} {
			got, err := s.ListValues(ctx, c.prefix)
			require.NoError(t, err)
			if assert.Equal(t, c.want, sortedKeys(got), "ListValues(%q)", c.prefix) {
				for k, v := range got {
					assert.Equal(t, []byte("v:"+k), v, "ListValues(%q)[%q]", c.prefix, k)
				}
			}
		}
		none, err := s.ListValues(ctx, "nothing/")
		require.NoError(t, err)
		assert.NotNil(t, none, "ListValues matching nothing")
		assert.Empty(t, none)
	})

	subtest(t, newStore, "Copies", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		in := []byte("original")
		require.NoError(t, s.PutValue(ctx, "put", in))
		in[0] = 'X' // the store must not retain the caller's slice

		got, err := s.GetValue(ctx, "put")
		require.NoError(t, err)
		require.Equal(t, []byte("original"), got, "PutValue retained its argument")
		got[0] = 'Y' // nor hand out its own
		got, err = s.GetValue(ctx, "put")
		require.NoError(t, err)
		assert.Equal(t, []byte("original"), got, "GetValue returned the stored slice")

		in2 := []byte("created")
		created, err := s.CreateValue(ctx, "create", in2)
		require.NoError(t, err)
		in2[0] = 'X'
		created[1] = 'Y'
		again, err := s.CreateValue(ctx, "create", []byte("other"))
		require.NoError(t, err)
		again[2] = 'Z'
		got, err = s.GetValue(ctx, "create")
		require.NoError(t, err)
		assert.Equal(t, []byte("created"), got, "CreateValue retained its argument or returned the stored slice")

		list, err := s.ListValues(ctx, "")
		require.NoError(t, err)
		for _, v := range list {
			if len(v) > 0 {
				v[0] = 'W'
			}
		}
		list["injected"] = []byte("x")
		got, err = s.GetValue(ctx, "put")
		require.NoError(t, err)
		assert.Equal(t, []byte("original"), got, "ListValues returned stored slices")
		_, err = s.GetValue(ctx, "injected")
		assert.ErrorIs(t, err, store.ErrNotFound, "ListValues returned the stored map")
	})
}
