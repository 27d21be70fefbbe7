//! Renders `wit/REFERENCE.md` from `wit/plugin.wit`: every world, interface,
//! type and function, with the doc comments the WIT carries. A test keeps
//! the file and the WIT in step; `make wit-reference` rewrites it.

use std::fmt::Write as _;
use std::path::Path;

use wit_parser::{
    Docs, Function, FunctionKind, Handle, InterfaceId, Resolve, Type, TypeDefKind, TypeId,
    WorldItem,
};

/// Where the WIT of this repository lives.
pub fn wit_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit"))
}

/// The reference for the package in `dir`, as Markdown.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let mut resolve = Resolve::new();
    let (package, _) = resolve.push_path(dir)?;
    let mut out = String::new();
    let name = resolve.packages[package].name.to_string();
    writeln!(
        out,
        "# WIT reference: `{name}`\n\n\
         Generated from [`plugin.wit`](plugin.wit), the one WIT source, by \
         `make wit-reference`; a test fails when the two disagree, so edit the \
         `.wit` file and regenerate this one.\n"
    )?;
    let docs = paragraph(&resolve.packages[package].docs);
    if !docs.is_empty() {
        writeln!(out, "{docs}\n")?;
    }

    writeln!(out, "## Worlds\n")?;
    for (world_name, world) in &resolve.packages[package].worlds {
        let world = &resolve.worlds[*world];
        writeln!(out, "### world `{world_name}`\n")?;
        let docs = paragraph(&world.docs);
        if !docs.is_empty() {
            writeln!(out, "{docs}\n")?;
        }
        writeln!(out, "| direction | interface |\n|---|---|")?;
        for (direction, items) in [("import", &world.imports), ("export", &world.exports)] {
            for (key, item) in items {
                if let WorldItem::Interface { .. } = item {
                    writeln!(out, "| {direction} | `{}` |", resolve.name_world_key(key))?;
                }
            }
        }
        writeln!(out)?;
    }

    for (interface_name, id) in &resolve.packages[package].interfaces {
        interface(&mut out, &resolve, interface_name, *id)?;
    }
    Ok(out)
}

/// Doc comments as one paragraph per blank-line-separated block.
fn paragraph(docs: &Docs) -> String {
    docs.contents.as_deref().unwrap_or("").trim().to_owned()
}

/// Doc comments on one line, for a table cell.
fn cell(docs: &Docs) -> String {
    paragraph(docs)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn interface(
    out: &mut String,
    resolve: &Resolve,
    name: &str,
    id: InterfaceId,
) -> anyhow::Result<()> {
    let interface = &resolve.interfaces[id];
    writeln!(
        out,
        "## interface `{name}`\n\n`{}`\n",
        resolve.id_of(id).unwrap_or_default()
    )?;
    let docs = paragraph(&interface.docs);
    if !docs.is_empty() {
        writeln!(out, "{docs}\n")?;
    }
    for (type_name, type_id) in &interface.types {
        let def = &resolve.types[*type_id];
        match &def.kind {
            // `use` of another interface's type.
            TypeDefKind::Type(Type::Id(other)) if resolve.types[*other].owner != def.owner => {
                let from = match resolve.types[*other].owner {
                    wit_parser::TypeOwner::Interface(owner) => {
                        resolve.interfaces[owner].name.clone().unwrap_or_default()
                    }
                    _ => "another interface".into(),
                };
                writeln!(out, "Uses `{type_name}` from `{from}`.\n")?;
                continue;
            }
            _ => {}
        }
        type_def(out, resolve, type_name, *type_id)?;
        if let TypeDefKind::Resource = def.kind {
            for function in interface.functions.values() {
                let owner = match function.kind {
                    FunctionKind::Method(owner)
                    | FunctionKind::Static(owner)
                    | FunctionKind::Constructor(owner)
                    | FunctionKind::AsyncMethod(owner)
                    | FunctionKind::AsyncStatic(owner) => Some(owner),
                    _ => None,
                };
                if owner == Some(*type_id) {
                    function_entry(out, resolve, function, "####")?;
                }
            }
        }
    }
    let freestanding: Vec<&Function> = interface
        .functions
        .values()
        .filter(|f| {
            matches!(
                f.kind,
                FunctionKind::Freestanding | FunctionKind::AsyncFreestanding
            )
        })
        .collect();
    if !freestanding.is_empty() {
        writeln!(out, "### functions\n")?;
        for function in freestanding {
            function_entry(out, resolve, function, "####")?;
        }
    }
    Ok(())
}

fn type_def(out: &mut String, resolve: &Resolve, name: &str, id: TypeId) -> anyhow::Result<()> {
    let def = &resolve.types[id];
    let kind = match &def.kind {
        TypeDefKind::Record(_) => "record",
        TypeDefKind::Variant(_) => "variant",
        TypeDefKind::Enum(_) => "enum",
        TypeDefKind::Flags(_) => "flags",
        TypeDefKind::Resource => "resource",
        _ => "type",
    };
    writeln!(out, "### {kind} `{name}`\n")?;
    let docs = paragraph(&def.docs);
    if !docs.is_empty() {
        writeln!(out, "{docs}\n")?;
    }
    match &def.kind {
        TypeDefKind::Record(record) => {
            writeln!(out, "| field | type | meaning |\n|---|---|---|")?;
            for field in &record.fields {
                writeln!(
                    out,
                    "| `{}` | `{}` | {} |",
                    field.name,
                    type_name(resolve, &field.ty),
                    cell(&field.docs)
                )?;
            }
            writeln!(out)?;
        }
        TypeDefKind::Variant(variant) => {
            writeln!(out, "| case | payload | meaning |\n|---|---|---|")?;
            for case in &variant.cases {
                let payload = case
                    .ty
                    .as_ref()
                    .map_or("".to_owned(), |t| format!("`{}`", type_name(resolve, t)));
                writeln!(
                    out,
                    "| `{}` | {payload} | {} |",
                    case.name,
                    cell(&case.docs)
                )?;
            }
            writeln!(out)?;
        }
        TypeDefKind::Enum(cases) => {
            writeln!(out, "| case | meaning |\n|---|---|")?;
            for case in &cases.cases {
                writeln!(out, "| `{}` | {} |", case.name, cell(&case.docs))?;
            }
            writeln!(out)?;
        }
        TypeDefKind::Flags(flags) => {
            writeln!(out, "| flag | meaning |\n|---|---|")?;
            for flag in &flags.flags {
                writeln!(out, "| `{}` | {} |", flag.name, cell(&flag.docs))?;
            }
            writeln!(out)?;
        }
        TypeDefKind::Resource => {}
        _ => writeln!(
            out,
            "`type {name} = {}`\n",
            type_name(resolve, &Type::Id(id))
        )?,
    }
    Ok(())
}

fn function_entry(
    out: &mut String,
    resolve: &Resolve,
    function: &Function,
    heading: &str,
) -> anyhow::Result<()> {
    // A method's first parameter is the resource itself.
    let skip = usize::from(matches!(
        function.kind,
        FunctionKind::Method(_) | FunctionKind::AsyncMethod(_)
    ));
    let params: Vec<String> = function
        .params
        .iter()
        .skip(skip)
        .map(|p| format!("{}: {}", p.name, type_name(resolve, &p.ty)))
        .collect();
    let result = function
        .result
        .as_ref()
        .map_or(String::new(), |t| format!(" -> {}", type_name(resolve, t)));
    writeln!(
        out,
        "{heading} `{}: func({}){result}`\n",
        function.item_name(),
        params.join(", ")
    )?;
    let docs = paragraph(&function.docs);
    if !docs.is_empty() {
        writeln!(out, "{docs}\n")?;
    }
    Ok(())
}

/// A type as WIT writes it.
fn type_name(resolve: &Resolve, ty: &Type) -> String {
    let id = match ty {
        Type::Bool => return "bool".into(),
        Type::U8 => return "u8".into(),
        Type::U16 => return "u16".into(),
        Type::U32 => return "u32".into(),
        Type::U64 => return "u64".into(),
        Type::S8 => return "s8".into(),
        Type::S16 => return "s16".into(),
        Type::S32 => return "s32".into(),
        Type::S64 => return "s64".into(),
        Type::F32 => return "f32".into(),
        Type::F64 => return "f64".into(),
        Type::Char => return "char".into(),
        Type::String => return "string".into(),
        Type::ErrorContext => return "error-context".into(),
        Type::Id(id) => *id,
    };
    let def = &resolve.types[id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    let optional = |t: &Option<Type>| t.as_ref().map(|t| type_name(resolve, t));
    match &def.kind {
        TypeDefKind::Handle(Handle::Own(resource)) => type_name(resolve, &Type::Id(*resource)),
        TypeDefKind::Handle(Handle::Borrow(resource)) => {
            format!("borrow<{}>", type_name(resolve, &Type::Id(*resource)))
        }
        TypeDefKind::List(t) => format!("list<{}>", type_name(resolve, t)),
        TypeDefKind::FixedLengthList(t, n) => format!("list<{}, {n}>", type_name(resolve, t)),
        TypeDefKind::Map(k, v) => {
            format!("map<{}, {}>", type_name(resolve, k), type_name(resolve, v))
        }
        TypeDefKind::Option(t) => format!("option<{}>", type_name(resolve, t)),
        TypeDefKind::Tuple(tuple) => format!(
            "tuple<{}>",
            tuple
                .types
                .iter()
                .map(|t| type_name(resolve, t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TypeDefKind::Result(r) => match (optional(&r.ok), optional(&r.err)) {
            (None, None) => "result".into(),
            (Some(ok), None) => format!("result<{ok}>"),
            (None, Some(err)) => format!("result<_, {err}>"),
            (Some(ok), Some(err)) => format!("result<{ok}, {err}>"),
        },
        TypeDefKind::Future(t) => optional(t).map_or("future".into(), |t| format!("future<{t}>")),
        TypeDefKind::Stream(t) => optional(t).map_or("stream".into(), |t| format!("stream<{t}>")),
        TypeDefKind::Type(t) => type_name(resolve, t),
        _ => "?".into(),
    }
}
