package runtimesvc

import (
	"encoding/base64"
	"encoding/json"
	"hash/fnv"
)

const (
	defaultPageSize = 20
	maxPageSize     = 100
	maxPage         = 1 << 20
)

// paging is a validated page request: either a page number or a cursor
// taken from an earlier response's next_page_token.
type paging struct {
	page   int32
	size   int32
	cursor *cursor // nil: start at page
}

// cursor is the position after the last item of the previous page, in the
// ordering that listing used. It is bound to the listing's filters.
type cursor struct {
	Filter uint32 `json:"f"`
	Page   int32  `json:"p"`
	Order  string `json:"o"` // which position column the listing used
	After  int64  `json:"a"` // the last item's position in that column
}

func filterDigest(filter string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(filter))
	return h.Sum32()
}

func parsePaging(page, size int32, token, filter string) (paging, error) {
	pg := paging{page: page, size: size}
	switch {
	case size < 0:
		return pg, invalid("page_size", "must not be negative")
	case size == 0:
		pg.size = defaultPageSize
	case size > maxPageSize:
		return pg, invalid("page_size", "must be at most %d", maxPageSize)
	}
	switch {
	case page < 0:
		return pg, invalid("page", "must be 1 or more")
	case page == 0:
		pg.page = 1
	case page > maxPage:
		return pg, invalid("page", "must be at most %d", maxPage)
	}
	if token == "" {
		return pg, nil
	}
	c, ok := decodeCursor(token)
	if !ok || c.Filter != filterDigest(filter) {
		return pg, invalid("page_token", "is not a token from this listing")
	}
	pg.cursor = c
	pg.page = c.Page
	return pg, nil
}

func decodeCursor(token string) (*cursor, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, false
	}
	var c cursor
	if err := json.Unmarshal(raw, &c); err != nil || c.Page < 1 || c.After < 0 || c.Order == "" {
		return nil, false
	}
	return &c, true
}

func encodeCursor(filter string, page int32, order string, after int64) string {
	raw, _ := json.Marshal(cursor{Filter: filterDigest(filter), Page: page, Order: order, After: after})
	return base64.RawURLEncoding.EncodeToString(raw)
}

// offset is the number of items before the page, for listings small
// enough to skip through.
func (p paging) offset() int64 { return int64(p.page-1) * int64(p.size) }
