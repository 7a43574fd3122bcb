//! `?page=&per_page=` and the `{data, page, per_page, total}` answer of every list.

use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

pub const MAX_PER_PAGE: u32 = 100;
pub const DEFAULT_PER_PAGE: u32 = 50;
/// Deeper pages are refused: offsets past this are a scan, not a use case.
pub const MAX_PAGE: u32 = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub page: u32,
    pub per_page: u32,
}

impl Paging {
    pub fn new(page: Option<u32>, per_page: Option<u32>) -> Result<Self, ApiError> {
        let page = page.unwrap_or(1);
        let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
        if page == 0 || page > MAX_PAGE {
            return Err(ApiError::invalid("page", "must be between 1 and 100000"));
        }
        if per_page == 0 || per_page > MAX_PER_PAGE {
            return Err(ApiError::invalid("per_page", "must be between 1 and 100"));
        }
        Ok(Self { page, per_page })
    }

    pub fn limit(&self) -> i64 {
        i64::from(self.per_page)
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.per_page)
    }

    /// The total of this page's `len` rows (see `db::page_total`).
    pub async fn total(
        &self,
        len: usize,
        count: impl AsyncFnOnce() -> Result<i64, sqlx::Error>,
    ) -> Result<i64, sqlx::Error> {
        crate::db::page_total(len, self.limit(), self.offset(), count).await
    }

    pub fn wrap<T>(&self, data: Vec<T>, total: i64) -> Page<T> {
        Page {
            data,
            page: self.page,
            per_page: self.per_page,
            total,
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[schema(example = 1)]
    pub page: u32,
    #[schema(example = 50)]
    pub per_page: u32,
    /// Items matching the filters, on all pages.
    #[schema(example = 1234)]
    pub total: i64,
}
