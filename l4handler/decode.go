package l4handler

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// decodeStrict unmarshals data into v, rejecting unknown fields. When a value
// fails to decode it finds the JSON field responsible, so that every error
// names it ("client_idle_timeout: time: invalid duration ...").
func decodeStrict(data []byte, v any) error {
	err := strictOnce(data, v)
	if err == nil {
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return fmt.Errorf("field %q: want %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	}
	if strings.Contains(err.Error(), "unknown field") {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	// find the field whose value fails on its own
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		return err
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	t := reflect.TypeOf(v).Elem()
	for _, k := range keys {
		one, _ := json.Marshal(map[string]json.RawMessage{k: fields[k]})
		if ferr := strictOnce(one, reflect.New(t).Interface()); ferr != nil {
			// a nested object: name the inner field too
			if ft, ok := fieldType(t, k); ok && ft.Kind() == reflect.Struct {
				if inner := decodeStrict(fields[k], reflect.New(ft).Interface()); inner != nil {
					return fmt.Errorf("field %q: %v", k, inner)
				}
			}
			return fmt.Errorf("field %q: %v", k, ferr)
		}
	}
	return err
}

// fieldType returns the type (pointers removed) of the field of struct type t
// whose JSON name is name.
func fieldType(t reflect.Type, name string) (reflect.Type, bool) {
	if t.Kind() != reflect.Struct {
		return nil, false
	}
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == name {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			return ft, true
		}
	}
	return nil, false
}

func strictOnce(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// canonical is the form of a handler's JSON that its identity is computed
// from: the "handler" key (which Caddy strips before decoding) removed, keys
// sorted at every level, no white space. A handler's own UnmarshalJSON and
// the config walk of the app (which sees the route's raw JSON) agree on it.
func canonical(raw []byte) (json.RawMessage, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	delete(m, "handler")
	return json.Marshal(m)
}

// configHash is the hex SHA-256 (first 8 bytes) of a canonical config.
func configHash(canon []byte) string {
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:8])
}
