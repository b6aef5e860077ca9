//! A PDF's text layer, page by page (lopdf). Scanned pages without text come back empty; a
//! file lopdf cannot read is an error whose text is stored as the file's processing error.

/// Most pages read from one PDF.
const MAX_PAGES: usize = 2_000;

/// The text of each page, in order.
pub fn page_texts(bytes: &[u8]) -> Result<Vec<String>, String> {
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| format!("unreadable PDF ({e})"))?;
    let pages: Vec<u32> = doc.get_pages().keys().copied().take(MAX_PAGES).collect();
    if pages.is_empty() {
        return Err("the PDF has no pages".to_owned());
    }
    let mut out = Vec::with_capacity(pages.len());
    for page in pages {
        // A page whose text cannot be decoded is left empty rather than failing the file.
        out.push(doc.extract_text(&[page]).unwrap_or_default().trim().to_owned());
    }
    if out.iter().all(|p| p.is_empty()) {
        return Err("the PDF has no text layer (a scan?)".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use lopdf::content::{Content, Operation};
    use lopdf::{dictionary, Document, Object, Stream};

    /// A PDF with one page per text, in Helvetica (what the integration tests upload too).
    pub fn pdf_with_pages(texts: &[&str]) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {"Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica"});
        let resources_id = doc.add_object(dictionary! {"Font" => dictionary! {"F1" => font_id}});
        let mut kids = Vec::new();
        for text in texts {
            let content = Content {
                operations: vec![
                    Operation::new("BT", vec![]),
                    Operation::new("Tf", vec!["F1".into(), 12.into()]),
                    Operation::new("Td", vec![72.into(), 700.into()]),
                    Operation::new("Tj", vec![Object::string_literal(*text)]),
                    Operation::new("ET", vec![]),
                ],
            };
            let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap_or_default()));
            let page_id = doc.add_object(dictionary! {
                "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
                "Resources" => resources_id, "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
            });
            kids.push(page_id.into());
        }
        let count = kids.len() as i64;
        doc.objects
            .insert(pages_id, Object::Dictionary(dictionary! {"Type" => "Pages", "Kids" => kids, "Count" => count}));
        let catalog_id = doc.add_object(dictionary! {"Type" => "Catalog", "Pages" => pages_id});
        doc.trailer.set("Root", catalog_id);
        let mut out = Vec::new();
        doc.save_to(&mut out).expect("in-memory PDF");
        out
    }

    #[test]
    fn pages_come_back_in_order() {
        let pdf = pdf_with_pages(&["Volcanoes erupt magma.", "Glaciers carve valleys."]);
        let pages = super::page_texts(&pdf).unwrap();
        assert_eq!(pages.len(), 2);
        assert!(pages[0].contains("Volcanoes erupt magma"), "{pages:?}");
        assert!(pages[1].contains("Glaciers carve valleys"), "{pages:?}");
        let doc = crate::documents::extract("application/pdf", &pdf, crate::documents::ChunkPlan::default()).unwrap();
        assert_eq!(doc.chunks.iter().map(|c| c.page_number).collect::<Vec<_>>(), [Some(1), Some(2)]);
    }

    #[test]
    fn a_corrupt_pdf_is_an_error_not_a_panic() {
        let mut pdf = pdf_with_pages(&["text"]);
        pdf.truncate(pdf.len() / 2);
        assert!(super::page_texts(&pdf).is_err());
        assert!(super::page_texts(b"%PDF-1.5\n garbage").is_err());
        assert!(super::page_texts(&[]).is_err());
    }
}
